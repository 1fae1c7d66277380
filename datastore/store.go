package datastore

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/cockroachdb/pebble/v2"
	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/query"
)

// MaxIDLen bounds record ids; ids are key segments and often file-name-like.
const MaxIDLen = 512

// Store is a typed store of JSON-encoded T values, one per id, under a
// single namespace such as "/peers": the record for id lives at
// <namespace>/<id>. It adds no locking of its own; the underlying datastore
// provides atomicity of single operations.
type Store[T any] struct {
	d  ds.Batching
	ns ds.Key
}

// NewStore returns a Store over namespace in d. The namespace is cleaned like
// a path ("peers" and "/peers/" both mean "/peers").
func NewStore[T any](d ds.Batching, namespace string) *Store[T] {
	return &Store[T]{d: d, ns: ds.NewKey(namespace)}
}

// Namespace returns the key under which the store keeps its records.
func (s *Store[T]) Namespace() ds.Key {
	return s.ns
}

// ValidateID checks that id can be used as a single key segment.
func ValidateID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%w: empty", ErrInvalidID)
	case len(id) > MaxIDLen:
		return fmt.Errorf("%w: %d bytes long (maximum %d)", ErrInvalidID, len(id), MaxIDLen)
	case strings.Contains(id, "/"):
		return fmt.Errorf("%w %q: contains '/'", ErrInvalidID, id)
	case id == "." || id == "..":
		// go-datastore cleans keys like paths, so these would escape the
		// namespace.
		return fmt.Errorf("%w %q: '.' and '..' are reserved", ErrInvalidID, id)
	}
	return nil
}

// Key returns the datastore key of id, for callers that write the record in
// a batch together with other keys.
func (s *Store[T]) Key(id string) (ds.Key, error) {
	if err := ValidateID(id); err != nil {
		return ds.Key{}, err
	}
	return s.ns.ChildString(id), nil
}

// Get returns the record for id, or an error wrapping ErrNotFound.
func (s *Store[T]) Get(ctx context.Context, id string) (T, error) {
	var v T
	k, err := s.Key(id)
	if err != nil {
		return v, err
	}
	raw, err := s.d.Get(ctx, k)
	if errors.Is(err, ds.ErrNotFound) {
		return v, fmt.Errorf("%w: %s", ErrNotFound, k)
	}
	if err != nil {
		return v, fmt.Errorf("datastore: get %s: %w", k, err)
	}
	if err := json.Unmarshal(raw, &v); err != nil {
		return v, fmt.Errorf("%w: %s: %w", ErrCorrupt, k, err)
	}
	return v, nil
}

// Put stores v under id, replacing any previous record.
func (s *Store[T]) Put(ctx context.Context, id string, v T) error {
	return s.PutTo(ctx, s.d, id, v)
}

// PutTo writes v under id to w, which is typically a batch of s's datastore,
// so that the record is committed together with related writes.
func (s *Store[T]) PutTo(ctx context.Context, w ds.Write, id string, v T) error {
	k, err := s.Key(id)
	if err != nil {
		return err
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("datastore: encode %s: %w", k, err)
	}
	if err := w.Put(ctx, k, raw); err != nil {
		return fmt.Errorf("datastore: put %s: %w", k, err)
	}
	return nil
}

// Delete removes the record for id. Deleting a missing record is not an
// error, so that retries and revocations are idempotent.
func (s *Store[T]) Delete(ctx context.Context, id string) error {
	return s.DeleteFrom(ctx, s.d, id)
}

// DeleteFrom deletes the record for id through w (typically a batch).
func (s *Store[T]) DeleteFrom(ctx context.Context, w ds.Write, id string) error {
	k, err := s.Key(id)
	if err != nil {
		return err
	}
	if err := w.Delete(ctx, k); err != nil && !errors.Is(err, ds.ErrNotFound) {
		return fmt.Errorf("datastore: delete %s: %w", k, err)
	}
	return nil
}

// Has reports whether a record for id exists.
func (s *Store[T]) Has(ctx context.Context, id string) (bool, error) {
	k, err := s.Key(id)
	if err != nil {
		return false, err
	}
	ok, err := s.d.Has(ctx, k)
	if err != nil {
		return false, fmt.Errorf("datastore: has %s: %w", k, err)
	}
	return ok, nil
}

// Entry is one record of a Store with its id.
type Entry[T any] struct {
	ID    string
	Value T
}

// Entries returns every record with its id, sorted by id. Keys nested deeper
// under the namespace (which a Store never writes) are ignored.
func (s *Store[T]) Entries(ctx context.Context) ([]Entry[T], error) {
	res, err := s.d.Query(ctx, query.Query{Prefix: s.ns.String()})
	if err != nil {
		return nil, fmt.Errorf("datastore: list %s: %w", s.ns, err)
	}
	defer res.Close()
	prefix := s.ns.String()
	if prefix != "/" {
		prefix += "/"
	}
	var out []Entry[T]
	for {
		r, more := res.NextSync()
		if !more {
			break
		}
		if r.Error != nil {
			return nil, fmt.Errorf("datastore: list %s: %w", s.ns, r.Error)
		}
		id, ok := strings.CutPrefix(r.Key, prefix)
		if !ok || ValidateID(id) != nil {
			continue
		}
		var v T
		if err := json.Unmarshal(r.Value, &v); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrCorrupt, r.Key, err)
		}
		out = append(out, Entry[T]{ID: id, Value: v})
	}
	// Sort here rather than in the query: the in-memory backend has no key
	// order of its own.
	slices.SortFunc(out, func(a, b Entry[T]) int { return cmp.Compare(a.ID, b.ID) })
	return out, nil
}

// List returns every record, sorted by id.
func (s *Store[T]) List(ctx context.Context) ([]T, error) {
	entries, err := s.Entries(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]T, len(entries))
	for i, e := range entries {
		out[i] = e.Value
	}
	return out, nil
}

// Scan calls fn with the id of each record that sorts after after (every
// record when after is ""), in id order (byte order, as Entries sorts),
// until fn returns false or an error, or the records end. get decodes the
// record; it may be called only during fn, and a record fn skips is not
// decoded. A non-empty after must be a valid id; it need not exist.
//
// On a pebble DB one iterator reads from after on, so a page of a large
// namespace costs the page, not the namespace (a prefix query starts at
// the prefix and cannot seek). Other datastores (the in-memory one, which
// has no key order) are read whole and sorted.
func (s *Store[T]) Scan(ctx context.Context, after string, fn func(id string, get func() (T, error)) (bool, error)) error {
	if after != "" {
		if err := ValidateID(after); err != nil {
			return err
		}
	}
	prefix := s.ns.String()
	if prefix != "/" {
		prefix += "/"
	}
	decode := func(key string, raw []byte) (T, error) {
		var v T
		if err := json.Unmarshal(raw, &v); err != nil {
			return v, fmt.Errorf("%w: %s: %w", ErrCorrupt, key, err)
		}
		return v, nil
	}
	pb, ok := s.d.(pebbleBatching)
	if !ok {
		return s.scanSorted(ctx, prefix, after, decode, fn)
	}
	if !pb.g.enter() {
		return ErrClosed
	}
	defer pb.g.exit()
	lower := []byte(prefix)
	if after != "" {
		// The least key after prefix+after.
		lower = append([]byte(prefix+after), 0)
	}
	it, err := pb.DB.NewIterWithContext(ctx, &pebble.IterOptions{LowerBound: lower, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return fmt.Errorf("datastore: list %s: %w", s.ns, err)
	}
	for valid := it.First(); valid; valid = it.Next() {
		if err = ctx.Err(); err != nil {
			break
		}
		key := string(it.Key())
		id := key[len(prefix):]
		if ValidateID(id) != nil {
			continue // nested deeper: not a record of this store
		}
		var more bool
		more, err = fn(id, func() (T, error) {
			raw, err := it.ValueAndErr()
			if err != nil {
				var zero T
				return zero, fmt.Errorf("datastore: get %s: %w", key, err)
			}
			return decode(key, raw)
		})
		if err != nil || !more {
			break
		}
	}
	if err == nil {
		if err = it.Error(); err != nil {
			err = fmt.Errorf("datastore: list %s: %w", s.ns, err)
		}
	}
	return errors.Join(err, it.Close())
}

// scanSorted is Scan for a datastore without a key order of its own.
func (s *Store[T]) scanSorted(ctx context.Context, prefix, after string, decode func(string, []byte) (T, error),
	fn func(id string, get func() (T, error)) (bool, error)) error {
	res, err := s.d.Query(ctx, query.Query{Prefix: s.ns.String()})
	if err != nil {
		return fmt.Errorf("datastore: list %s: %w", s.ns, err)
	}
	entries, err := res.Rest()
	if err != nil {
		return fmt.Errorf("datastore: list %s: %w", s.ns, err)
	}
	slices.SortFunc(entries, func(a, b query.Entry) int { return cmp.Compare(a.Key, b.Key) })
	for _, e := range entries {
		id, ok := strings.CutPrefix(e.Key, prefix)
		if !ok || ValidateID(id) != nil || id <= after {
			continue
		}
		more, err := fn(id, func() (T, error) { return decode(e.Key, e.Value) })
		if err != nil || !more {
			return err
		}
	}
	return ctx.Err()
}

// prefixEnd is the least key after every key that starts with prefix, or
// nil when there is none.
func prefixEnd(prefix string) []byte {
	for i := len(prefix) - 1; i >= 0; i-- {
		if prefix[i] != 0xff {
			end := []byte(prefix[:i+1])
			end[i]++
			return end
		}
	}
	return nil
}
