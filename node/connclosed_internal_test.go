package node

import (
	"errors"
	"fmt"
	"testing"

	"github.com/coattail/coattail/node/wire"
	"github.com/quic-go/quic-go"
)

// A list is asked again only when the peer closed the QUIC connection
// under it (a duplicate connection closed after a simultaneous dial), not
// when the peer refused it, the local side closed, or anything else failed.
func TestConnClosedUnder(t *testing.T) {
	remote := &quic.ApplicationError{Remote: true, ErrorCode: 0}
	local := &quic.ApplicationError{Remote: false, ErrorCode: 0}
	for _, c := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("%w peer closed the stream: wire: read frame: %w", ErrPeer, remote), true},
		{fmt.Errorf("read: %w", local), false},
		{wire.Errorf(wire.CodeUnauthorized, "no"), false},
		{errors.New("connection reset"), false},
		{nil, false},
	} {
		if got := connClosedUnder(c.err); got != c.want {
			t.Errorf("connClosedUnder(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
