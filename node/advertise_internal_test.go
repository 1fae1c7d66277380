package node

import (
	"slices"
	"testing"

	ma "github.com/multiformats/go-multiaddr"
)

// The address factory leaves loopback addresses out of what the host
// advertises (identify, tokens) when it has any other direct address, keeps
// them when they are all it has, keeps relay circuits, and adds the
// network.announce addresses once.
func TestAdvertiseFiltersLoopback(t *testing.T) {
	addrs := func(ss ...string) []ma.Multiaddr {
		var out []ma.Multiaddr
		for _, s := range ss {
			out = append(out, ma.StringCast(s))
		}
		return out
	}
	strs := func(as []ma.Multiaddr) []string {
		out := addrStrings(as)
		slices.Sort(out)
		return out
	}
	const (
		lo4   = "/ip4/127.0.0.1/tcp/4001"
		lo4q  = "/ip4/127.0.0.1/udp/4001/quic-v1"
		lo6   = "/ip6/::1/tcp/4001"
		lan   = "/ip4/192.168.1.2/tcp/4001"
		ula   = "/ip6/fd00::2/udp/4001/quic-v1"
		pub   = "/ip4/93.184.216.34/tcp/4001"
		relay = "/ip4/93.184.216.35/tcp/4001/p2p/12D3KooWGRUVh7QTqMNB4nBAKmJxQdNBk4cx9JjQa6BdnYKBDPZE/p2p-circuit"
		loRel = "/ip4/127.0.0.1/tcp/4002/p2p/12D3KooWGRUVh7QTqMNB4nBAKmJxQdNBk4cx9JjQa6BdnYKBDPZE/p2p-circuit"
		dns   = "/dns4/shop.example/tcp/5210"
	)
	for _, tc := range []struct {
		name     string
		announce []string
		in, want []string
	}{
		{"loopback only", nil, []string{lo4, lo4q, lo6}, []string{lo4, lo4q, lo6}},
		{"lan and loopback", nil, []string{lo4, lo4q, lo6, lan, ula}, []string{lan, ula}},
		{"public and loopback", nil, []string{lo4, pub}, []string{pub}},
		{"relay circuits are kept", nil, []string{lo4, lan, relay, loRel}, []string{lan, loRel, relay}},
		{"a relay circuit is not a direct address", nil, []string{lo4, relay}, []string{lo4, relay}},
		{"announce added once", []string{dns, lan}, []string{lo4, lan}, []string{dns, lan}},
		{"announce beside loopback only", []string{dns}, []string{lo4}, []string{dns, lo4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := addrs(tc.in...)
			orig := strs(in)
			got := strs(advertise(addrs(tc.announce...))(in))
			want := slices.Clone(tc.want)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Fatalf("advertise(%v) with announce %v = %v, want %v", tc.in, tc.announce, got, want)
			}
			if !slices.Equal(strs(in), orig) {
				t.Fatalf("advertise changed its input: %v, was %v", strs(in), orig)
			}
		})
	}
}
