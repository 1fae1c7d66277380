package wire

import (
	"errors"
	"fmt"
	"time"
)

// Sentinel errors. Returned errors wrap one of these (test with errors.Is) and
// add the detail.
var (
	// ErrFrameTooLarge: a frame header announced more bytes than the reader's
	// limit. Detected from the header alone, before any allocation.
	ErrFrameTooLarge = errors.New("wire: frame too large")
	// ErrEmptyFrame: a frame header announced zero bytes, so not even a type.
	ErrEmptyFrame = errors.New("wire: empty frame")
	// ErrUnknownType: a frame type this version does not define.
	ErrUnknownType = errors.New("wire: unknown frame type")
	// ErrUnexpected: a well-formed frame of the wrong type for the point the
	// stream has reached.
	ErrUnexpected = errors.New("wire: unexpected frame")
	// ErrMalformed: a payload that does not decode: bad JSON, unknown JSON
	// field, trailing data, a length that runs past the payload, an integer
	// out of range.
	ErrMalformed = errors.New("wire: malformed payload")
	// ErrEncode is returned by Writer.JSON for a value that cannot be
	// encoded (such as a json.RawMessage that is not JSON): nothing was
	// written.
	ErrEncode = errors.New("wire: encode")
	// ErrVersion is wrapped by every *VersionError.
	ErrVersion = errors.New("wire: version mismatch")
)

// VersionError reports that the remote speaks another version of a protocol.
type VersionError struct {
	Protocol string // protocol or operation the mismatch happened on
	Got      string // version the remote announced
	Want     string // version we speak
}

func (e *VersionError) Error() string {
	return fmt.Sprintf("wire: %s: remote speaks version %q, we speak %q", e.Protocol, e.Got, e.Want)
}

// Unwrap makes errors.Is(err, ErrVersion) true.
func (e *VersionError) Unwrap() error { return ErrVersion }

// CheckVersion returns a *VersionError unless got is exactly Version.
// Equality rather than semver compatibility is deliberate: JSON messages are
// decoded strictly (unknown fields are refused), so any change to a message
// is a new version, advertised side by side with the old one under its own
// protocol ID.
func CheckVersion(protocol, got string) error {
	if got == Version {
		return nil
	}
	return &VersionError{Protocol: protocol, Got: got, Want: Version}
}

// Code classifies a remote error. Codes are stable strings on the wire;
// unknown codes from a newer peer are kept as they are.
type Code string

// Error codes. docs/PROTOCOL.md says when the node sends each.
const (
	CodeUnauthorized Code = "unauthorized"  // no, invalid, expired or revoked token, or bearer mismatch
	CodeForbidden    Code = "forbidden"     // valid token without the needed permission
	CodeNotFound     Code = "not_found"     // no such action, receiver or subscription
	CodeBadRequest   Code = "bad_request"   // malformed or invalid request
	CodeRateLimited  Code = "rate_limited"  // try again after RetryAfterMs
	CodeTooLarge     Code = "too_large"     // input, output or frame over a limit
	CodeTimeout      Code = "timeout"       // action or stream deadline passed
	CodeUnavailable  Code = "unavailable"   // shutting down, queue full, dependency down
	CodeActionFailed Code = "action_failed" // the action ran and failed
	CodeInternal     Code = "internal"      // a bug or local failure on the remote
	CodeVersion      Code = "version"       // version mismatch
	// CodeHopLimit: a cascade past the remote's limits.max_hops (older
	// nodes send bad_request).
	CodeHopLimit Code = "hop_limit"
)

// Error is an error reported by the remote side, carried in a TError frame as
// JSON. It is also what a handler returns to have a typed error sent.
type Error struct {
	Code         Code   `json:"code"`
	Message      string `json:"message"`
	RetryAfterMs int64  `json:"retry_after_ms,omitempty"`
	// Item, on publish 1.3.0 only, is the place (from 1) in the refused
	// batch of the publication the batch was refused for: over the
	// acceptor's max_payload, or not JSON in UTF-8. Nothing of that batch
	// was stored. 0 (absent): the refusal is not about one publication, or
	// the acceptor does not say (an older version, whose opener's strict
	// decoding would refuse the key).
	Item int `json:"item,omitempty"`
}

// Errorf builds an *Error with a formatted message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Error reads "remote: forbidden: <message>" so that a user seeing it knows
// the refusal came from the other instance, not from the local one.
func (e *Error) Error() string {
	s := "remote: " + string(e.Code)
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.RetryAfterMs > 0 {
		s += " (retry after " + e.RetryAfter().String() + ")"
	}
	if e.Item > 0 {
		s += fmt.Sprintf(" (publication %d of the batch)", e.Item)
	}
	return s
}

// RetryAfter is RetryAfterMs as a duration.
func (e *Error) RetryAfter() time.Duration {
	// A peer's value: clamped to [0, 1h] (it could overflow or be negative).
	return time.Duration(min(max(e.RetryAfterMs, 0), int64(time.Hour/time.Millisecond))) * time.Millisecond
}

// Unwrap maps the version code onto ErrVersion so that errors.Is(err,
// ErrVersion) holds whether the mismatch was found locally or remotely.
func (e *Error) Unwrap() error {
	if e.Code == CodeVersion {
		return ErrVersion
	}
	return nil
}

// IsCode reports whether err is, or wraps, an *Error with the given code.
func IsCode(err error, code Code) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// ToError turns a local error into the *Error to send to the remote. An
// *Error is sent as it is and a *VersionError becomes CodeVersion; anything
// else becomes CodeInternal with a generic message, because local error
// text can reveal paths and internals the remote has no business seeing.
func ToError(err error) *Error {
	var we *Error
	if errors.As(err, &we) {
		return we
	}
	var ve *VersionError
	if errors.As(err, &ve) {
		return &Error{Code: CodeVersion, Message: fmt.Sprintf("%s: this peer speaks version %q, not %q", ve.Protocol, ve.Want, ve.Got)}
	}
	return &Error{Code: CodeInternal, Message: "internal error"}
}
