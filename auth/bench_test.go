package auth

import (
	"context"
	"crypto/ed25519"
	"strings"
	"testing"
	"time"
)

// sigVerifyNs measures one bare Ed25519 verification of the token's signing
// input in this run, the baseline the cached path is compared against.
func sigVerifyNs(b *testing.B, f *fixture, raw string) float64 {
	b.Helper()
	i := strings.LastIndexByte(raw, '.')
	sig := ed25519.Sign(f.a.priv, []byte(raw[:i]))
	const n = 200
	start := time.Now()
	for range n {
		if !ed25519.Verify(f.a.pub, []byte(raw[:i]), sig) {
			b.Fatal("baseline verify failed")
		}
	}
	return float64(time.Since(start).Nanoseconds()) / n
}

func benchFixture(b *testing.B) (*fixture, Record, Remote) {
	f := newFixture(b)
	rec := f.issue(b, IssueOptions{Reusable: true, Publish: []string{"orders.*", "logs.>"}, Subscribe: []string{">"}})
	return f, rec, direct(newPeer(b), "127.0.0.1")
}

func BenchmarkVerifyUncached(b *testing.B) {
	f, rec, r := benchFixture(b)
	ctx := context.Background()
	base := sigVerifyNs(b, f, rec.Token)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		f.a.cacheMu.Lock()
		clear(f.a.cache)
		f.a.cacheMu.Unlock()
		if _, err := f.a.Verify(ctx, rec.Token, r); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/base, "x_sigverify")
}

func BenchmarkVerifyCached(b *testing.B) {
	f, rec, r := benchFixture(b)
	ctx := context.Background()
	if _, err := f.a.Verify(ctx, rec.Token, r); err != nil {
		b.Fatal(err)
	}
	base := sigVerifyNs(b, f, rec.Token)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := f.a.Verify(ctx, rec.Token, r); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/base, "x_sigverify")
}

func BenchmarkGrantCanPublish(b *testing.B) {
	f, rec, r := benchFixture(b)
	g, err := f.a.Verify(context.Background(), rec.Token, r)
	if err != nil {
		b.Fatal(err)
	}
	base := sigVerifyNs(b, f, rec.Token)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if !g.CanPublish("orders.created") {
			b.Fatal("publish refused")
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/base, "x_sigverify")
}
