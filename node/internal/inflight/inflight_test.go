package inflight

import (
	"testing"
	"time"
)

func TestTracker(t *testing.T) {
	var tr Tracker
	if !tr.Wait(0) {
		t.Fatal("Wait with nothing in progress reported work")
	}
	for range 2 {
		if !tr.Begin() {
			t.Fatal("Begin refused work before Shut")
		}
	}
	if tr.Count() != 2 {
		t.Fatalf("two Begins: count %d", tr.Count())
	}
	if tr.Wait(10 * time.Millisecond) {
		t.Fatal("Wait returned true with work in progress")
	}
	called := false
	if !tr.WhenIdle(func() { called = true }) {
		t.Fatal("WhenIdle with work in progress reported none")
	}
	tr.End()
	if called {
		t.Fatal("onIdle ran with work still in progress")
	}
	done := make(chan bool, 1)
	go func() { done <- tr.Wait(time.Minute) }()
	tr.End()
	if !<-done || !called || tr.Count() != 0 {
		t.Fatalf("after the last End: called %v, count %d (or Wait timed out)", called, tr.Count())
	}
	if tr.WhenIdle(func() {}) {
		t.Fatal("WhenIdle with nothing in progress reported work")
	}
	tr.Shut()
	if tr.Begin() {
		t.Fatal("Begin after Shut admitted work")
	}
}
