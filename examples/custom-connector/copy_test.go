package main

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// This directory copied into a module of one's own builds and vets
// without a line of Ferry changed: only the module path and the replace
// directive (here: pointing at this checkout) differ.
func TestCopiedIntoAnotherModuleBuilds(t *testing.T) {
	ferry, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	err = filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		b = bytes.ReplaceAll(b, []byte("example.com/crm-sink"), []byte("example.org/mine"))
		if p == "go.mod" {
			b = bytes.ReplaceAll(b, []byte("=> ../.."), []byte("=> "+ferry))
		}
		if err := os.MkdirAll(filepath.Join(dst, filepath.Dir(p)), 0o755); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, p), b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"build", "-o", filepath.Join(dst, "mine"), "."}, {"vet", "./..."}} {
		cmd := exec.Command("go", args...)
		cmd.Dir = dst
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s in the copy: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	out, err := exec.Command(filepath.Join(dst, "mine"), "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "failures") {
		t.Fatalf("the copy's binary --help (%v):\n%s", err, out)
	}
}
