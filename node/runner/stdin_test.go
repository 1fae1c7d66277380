package runner

import (
	"bytes"
	"io"
	"os"
	"testing"
)

// TestStdinForIsWrittenUpFront checks that the input a program reads is
// complete before it starts: an *os.File (a pre-filled pipe or a
// temporary file) that needs nothing from this process to be read to the
// end, so a program that outlives a killed service still reads all of it.
func TestStdinForIsWrittenUpFront(t *testing.T) {
	for _, n := range []int{0, 1, pipePrefill, pipePrefill + 1, 300_000} {
		input := bytes.Repeat([]byte{'7'}, n)
		r, done := stdinFor(input)
		f, ok := r.(*os.File)
		if !ok {
			done()
			t.Fatalf("%d bytes: stdin is a %T, want an *os.File filled before the program starts", n, r)
		}
		got, err := io.ReadAll(f)
		done()
		if err != nil {
			t.Fatalf("%d bytes: %v", n, err)
		}
		if !bytes.Equal(got, input) {
			t.Errorf("%d bytes: read back %d bytes, want the input", n, len(got))
		}
	}
}
