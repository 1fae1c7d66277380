package topics

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"testing"
	"time"

	"github.com/coattail/coattail/datastore"
	ds "github.com/ipfs/go-datastore"
)

const benchBatch = 256 // messages per Publish call

// BenchmarkQueuePublish measures durable publication into pebble: batches
// of benchBatch messages per Publish call, to 1 and 10 matching
// subscriptions, from one goroutine and from b.RunParallel. Each case also
// measures, in the same run, raw pebble batches of the same log keys and
// bytes with one Sync per batch, and reports the ratio as x-raw. Use a
// small -benchtime for the 64 KiB cases (each op is 16 MiB).
func BenchmarkQueuePublish(b *testing.B) {
	for _, size := range []int{128, 64 << 10} {
		for _, subs := range []int{1, 10} {
			for _, parallel := range []bool{false, true} {
				mode := "serial"
				if parallel {
					mode = "parallel"
				}
				b.Run(fmt.Sprintf("size=%d/subs=%d/%s", size, subs, mode), func(b *testing.B) {
					benchPublish(b, size, subs, parallel)
				})
			}
		}
	}
}

func benchPublish(b *testing.B, size, subs int, parallel bool) {
	db, err := datastore.Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	qs, err := OpenQueues(context.Background(), db.Batching(), QueueOptions{Bound: math.MaxInt})
	if err != nil {
		b.Fatal(err)
	}
	for i := range subs {
		if err := qs.AddSubscription(context.Background(), Subscription{ID: "bench" + strconv.Itoa(i), Pattern: "bench.>"}); err != nil {
			b.Fatal(err)
		}
	}
	msgs := make([]Message, benchBatch)
	data := make([]byte, size)
	for i := range msgs {
		msgs[i] = Message{Subject: "bench.publish", Data: data, Time: 1}
	}
	publish := func() {
		n, err := qs.Publish(context.Background(), msgs, nil)
		if err != nil || n != benchBatch*subs {
			b.Errorf("Publish = %d, %v", n, err)
		}
	}

	b.ReportAllocs()
	b.ResetTimer()
	if parallel {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				publish()
			}
		})
	} else {
		for range b.N {
			publish()
		}
	}
	b.StopTimer()
	elapsed := b.Elapsed()
	if err := qs.Close(); err != nil {
		b.Fatal(err)
	}

	rate := float64(b.N*benchBatch) / elapsed.Seconds()
	raw := rawPebbleRate(b, b.N, size)
	b.ReportMetric(rate, "msgs/s")
	b.ReportMetric(rate*float64(size)/1e6, "MB/s")
	b.ReportMetric(raw, "raw-msgs/s")
	b.ReportMetric(rate/raw, "x-raw")
}

// rawPebbleRate writes batches of the same log keys and values straight
// into a fresh pebble datastore, one Sync per batch, and returns messages
// per second. It is the ceiling the queue is measured against: the queue
// writes each message once whatever the number of subscriptions, so the
// baseline does too.
func rawPebbleRate(b *testing.B, batches, size int) float64 {
	db, err := datastore.Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	store := db.Batching()
	ctx := context.Background()
	m := Message{Subject: "bench.publish", Data: make([]byte, size), Time: 1}
	val, _ := appendEntry(nil, &m, nil)
	var pos uint64
	var key []byte
	start := time.Now()
	for range batches {
		// A pre-sized batch, as the queue's rounds use.
		bt, err := store.(datastore.SizedBatcher).SizedBatch(ctx, benchBatch*(len(val)+logKeyLen+16))
		if err != nil {
			b.Fatal(err)
		}
		for range benchBatch {
			pos++
			key = appendLogKey(key[:0], pos)
			if err := bt.Put(ctx, ds.RawKey(string(key)), val); err != nil {
				b.Fatal(err)
			}
		}
		if err := bt.Commit(ctx); err != nil {
			b.Fatal(err)
		}
		if err := store.Sync(ctx, ds.RawKey(queueNamespace)); err != nil {
			b.Fatal(err)
		}
	}
	return float64(batches*benchBatch) / time.Since(start).Seconds()
}
