package sinkapp

import (
	"fmt"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// ByteSize is a number of bytes in the config file or a flag: a plain
// integer, or a number with a unit: KiB, MiB, GiB (powers of 1024), kB,
// MB, GB (powers of 1000) or B.
type ByteSize int64

var byteUnits = []struct {
	suffix string
	n      int64
}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"kB", 1e3}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}

// parseByteSize reads "64MiB", "1048576" or "1.5 MB".
func parseByteSize(s string) (ByteSize, error) {
	t := strings.TrimSpace(s)
	unit := int64(1)
	for _, u := range byteUnits {
		if v, ok := strings.CutSuffix(t, u.suffix); ok {
			t, unit = strings.TrimSpace(v), u.n
			break
		}
	}
	if n, err := strconv.ParseInt(t, 10, 64); err == nil {
		return ByteSize(n * unit), nil
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || unit == 1 {
		return 0, fmt.Errorf("%q: not a size: write bytes (1048576) or a number with KiB, MiB, GiB, kB, MB or GB (64MiB)", s)
	}
	return ByteSize(f * float64(unit)), nil
}

// UnmarshalYAML reads a size from a YAML scalar.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	v, err := parseByteSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*b = v
	return nil
}

// String prints the size with the largest binary unit that divides it.
func (b ByteSize) String() string {
	for _, u := range []struct {
		suffix string
		n      int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if b != 0 && int64(b)%u.n == 0 {
			return fmt.Sprintf("%d%s", int64(b)/u.n, u.suffix)
		}
	}
	return strconv.FormatInt(int64(b), 10)
}
