package objstore

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// ErrInvalidKey is returned (wrapped, with the reason) for a key or list
// prefix that ValidateKey rejects.
var ErrInvalidKey = errors.New("objstore: invalid key")

// MaxKeyLen is the longest key accepted, in bytes. S3 allows 1024 bytes for
// the whole object name, which also holds the store's prefix.
const MaxKeyLen = 900

// tmpPrefix starts the names of the filesystem store's temporary files. Keys
// with a segment that starts with it are reserved, so that a temporary file
// can never be mistaken for an object (on either backend, to keep them
// interchangeable).
const tmpPrefix = ".objstore-tmp"

// ValidateKey reports whether key is a valid object key: a relative,
// slash-separated path of one or more non-empty segments, none of them "."
// or "..", in valid UTF-8 without NUL or other control characters, at most
// MaxKeyLen bytes, and with no segment starting with the reserved
// ".objstore-tmp". It is the single place where keys are checked; every
// Store method calls it.
func ValidateKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty key", ErrInvalidKey)
	}
	return validatePath(key, false)
}

// validatePrefix checks a List prefix: "" (everything) or a key, optionally
// with a trailing "/"; its last segment may be a partial name.
func validatePrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	return validatePath(prefix, true)
}

func validatePath(p string, isPrefix bool) error {
	what := "key"
	if isPrefix {
		what = "prefix"
	}
	bad := func(reason string) error {
		return fmt.Errorf("%w: %s %q: %s", ErrInvalidKey, what, p, reason)
	}
	if len(p) > MaxKeyLen {
		return fmt.Errorf("%w: %s of %d bytes is longer than %d", ErrInvalidKey, what, len(p), MaxKeyLen)
	}
	if !utf8.ValidString(p) {
		return bad("not valid UTF-8")
	}
	for _, r := range p {
		if r == 0 {
			return bad("contains NUL")
		}
		if r < 0x20 || r == 0x7f {
			return bad("contains a control character")
		}
	}
	if strings.HasPrefix(p, "/") {
		return bad("must be relative (no leading /)")
	}
	body := p
	if isPrefix {
		body = strings.TrimSuffix(p, "/")
		if body == "" {
			return bad("must be relative (no leading /)")
		}
	}
	for seg := range strings.SplitSeq(body, "/") {
		switch {
		case seg == "":
			if strings.HasSuffix(body, "/") && !isPrefix {
				return bad("must not end with /")
			}
			return bad("has an empty path segment")
		case seg == "." || seg == "..":
			return bad(`has a "." or ".." segment`)
		case strings.HasPrefix(seg, tmpPrefix):
			return bad("has a segment starting with the reserved " + tmpPrefix)
		}
	}
	return nil
}
