// Package jsonscan walks JSON that json.Valid has accepted without
// decoding it: the hot paths that only need to find a few keys of an
// object (trace context in headers, the fields of an outbox message)
// use it instead of encoding/json.
package jsonscan

import "bytes"

// SkipSpace returns the index of the first byte at or after i that is
// not JSON whitespace.
func SkipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// String returns the index just past the string that starts at b[i]
// (a '"'), and whether it holds an escape; -1 if b ends first.
func String(b []byte, i int) (end int, escaped bool) {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '"':
			return j + 1, escaped
		case '\\':
			escaped = true
			j++
		}
	}
	return -1, escaped
}

// Value returns the index just past the JSON value that starts at b[i],
// or -1 if b ends first.
func Value(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	switch b[i] {
	case '"':
		end, _ := String(b, i)
		return end
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			case '"':
				end, _ := String(b, i)
				if end < 0 {
					return -1
				}
				i = end - 1
			}
		}
		return -1
	}
	for ; i < len(b); i++ { // a number, true, false or null
		switch b[i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return i
		}
	}
	return i
}

// Object calls fn with each member of the object b holds (valid JSON):
// the key without its quotes, and the value as written. It stops when fn
// returns false. isObject is false when b holds another JSON value; done
// is whether every member was walked.
func Object(b []byte, fn func(key, value []byte) bool) (isObject, done bool) {
	i := SkipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return false, false
	}
	i = SkipSpace(b, i+1)
	for i < len(b) && b[i] == '"' {
		end, _ := String(b, i)
		if end < 0 {
			return true, false
		}
		key := b[i+1 : end-1]
		i = SkipSpace(b, end)
		if i >= len(b) || b[i] != ':' {
			return true, false
		}
		start := SkipSpace(b, i+1)
		if i = Value(b, start); i < 0 {
			return true, false
		}
		if !fn(key, b[start:i]) {
			return true, false
		}
		i = SkipSpace(b, i)
		if i < len(b) && b[i] == ',' {
			i = SkipSpace(b, i+1)
		}
	}
	return true, true
}

// HasEscape reports whether b holds a backslash.
func HasEscape(b []byte) bool { return bytes.IndexByte(b, '\\') >= 0 }
