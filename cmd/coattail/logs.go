package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/coattail/coattail/node"
	"github.com/spf13/cobra"
)

func newServiceLogsCmd(a *app) *cobra.Command {
	var (
		lines  int
		follow bool
		asJSON bool
		level  string
	)
	cmd := &cobra.Command{
		Use:   "logs",
		Short: "Print the instance's service log (the last lines; -f to follow)",
		Long: `Print the last --lines lines of the instance's service log (log.file in
config.yml), one event per line: time, level, message, then its fields as
key=value. --json prints the lines as stored (JSON). --level leaves out the
events below a level (--lines counts the lines it leaves in). -f keeps
printing what the service logs until interrupted, also across a rotation of
the file. Lines that are not log events (what a crashing service printed) are
printed as they are. The service need not run.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if lines < 0 {
				return fmt.Errorf("--lines %d must not be negative (0: the whole log)", lines)
			}
			minLevel, ok := logLevels[strings.ToUpper(level)]
			if !ok {
				return fmt.Errorf("--level %q is not one of debug, info, warn, error", level)
			}
			l, err := a.layout()
			if err != nil {
				return err
			}
			cfg, err := node.LoadConfig(l.Config())
			if err != nil {
				return err
			}
			path := l.LogFile(cfg)
			if real, err := filepath.EvalSymlinks(path); err == nil {
				path = real
			}
			fi, err := os.Stat(path)
			switch {
			case errors.Is(err, os.ErrNotExist):
				return fmt.Errorf("no service log at %s yet (the service has not started since log.file was set)", path)
			case err != nil:
				return err
			case !fi.Mode().IsRegular():
				return fmt.Errorf("log.file %s is not a regular file (a device or pipe): the service's log goes there, and cannot be read back here", cfg.Log.File)
			}
			// Ctrl-C (the context) stops it at the next line, also while
			// it prints a long log or looks for its last lines.
			ctx := cmd.Context()
			p := logPrinter{ctx: ctx, out: a.out, json: asJSON, min: minLevel}
			f, err := openLogFile(path)
			if err != nil {
				return err
			}
			defer func() { f.Close() }() // followLog may replace f
			start, err := tailOffset(ctx, f, lines, p.shows)
			if ctx.Err() != nil {
				return nil
			}
			if err != nil {
				return err
			}
			if _, err := f.Seek(start, io.SeekStart); err != nil {
				return err
			}
			r := bufio.NewReaderSize(f, 64<<10)
			off, err := p.copy(r, start, follow)
			if err != nil || !follow || ctx.Err() != nil {
				return err
			}
			return followLog(ctx, path, &f, r, off, &p)
		},
	}
	cmd.Flags().IntVarP(&lines, "lines", "n", 20, "how many of the last lines to print (0: the whole log)")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new lines until interrupted")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the lines as stored (JSON)")
	cmd.Flags().StringVar(&level, "level", "debug", "leave out events below this level: debug, info, warn or error")
	return cmd
}

var logLevels = map[string]int{"DEBUG": 0, "INFO": 1, "WARN": 2, "ERROR": 3}

// tailOffset returns where the last n lines of f that shows takes begin
// (0 for n == 0 or a file with fewer), reading backwards from its end
// until ctx ends. A last line still being written (no newline yet) is
// one of them. shows gets at most maxLogLine bytes of a line, and whether
// more were left out, as the printer does.
func tailOffset(ctx context.Context, f *os.File, n int, shows func(line []byte, cut int64) bool) (int64, error) {
	if n == 0 {
		return 0, nil
	}
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	end := fi.Size()
	if end == 0 {
		return 0, nil
	}
	buf := make([]byte, 64<<10)
	if _, err := f.ReadAt(buf[:1], end-1); err != nil {
		return 0, err
	}
	lineEnd := end // the line looked at is [its start, lineEnd)
	if buf[0] == '\n' {
		lineEnd--
	}
	var line []byte
	pos, seen := lineEnd, 0 // [0, pos) is still to search for newlines
	for {
		nl := int64(-1) // the newline before the line: -1 at the file's start
		for pos > 0 && nl < 0 {
			if err := ctx.Err(); err != nil {
				return 0, err
			}
			k := min(int64(len(buf)), pos)
			pos -= k
			chunk := buf[:k]
			if _, err := f.ReadAt(chunk, pos); err != nil {
				return 0, err
			}
			if i := bytes.LastIndexByte(chunk, '\n'); i >= 0 {
				nl = pos + int64(i)
				pos = nl
			}
		}
		start := nl + 1
		size := lineEnd - start
		keep := min(size, maxLogLine)
		line = slices.Grow(line[:0], int(keep))[:keep]
		if _, err := f.ReadAt(line, start); err != nil {
			return 0, err
		}
		if shows(line, size-keep) {
			if seen++; seen == n {
				return start, nil
			}
		}
		if nl < 0 {
			return 0, nil
		}
		lineEnd = nl
	}
}

// maxLogLine is the longest line printed whole: the rest of a longer one
// (binary garbage, a file without newlines) is skipped and counted, so
// that reading it takes bounded memory.
const maxLogLine = 1 << 20

// logPrinter prints log lines.
type logPrinter struct {
	ctx  context.Context // copy stops when it ends
	out  io.Writer
	json bool
	min  int
	// partial holds a last line read without its newline (the service
	// is writing it): printed once complete. cut counts the bytes of the
	// line left out beyond maxLogLine.
	partial []byte
	cut     int64
}

// copy prints the complete lines r holds from offset off and returns the
// offset after the last complete one. Without follow, a last line without
// its newline is printed too. It stops early, without an error, when
// p.ctx ends (Ctrl-C).
func (p *logPrinter) copy(r *bufio.Reader, off int64, follow bool) (int64, error) {
	for {
		if p.ctx.Err() != nil {
			return off, nil
		}
		chunk, err := r.ReadSlice('\n')
		off += int64(len(chunk))
		complete := len(chunk) > 0 && chunk[len(chunk)-1] == '\n'
		if keep := min(len(chunk), maxLogLine-len(p.partial)); keep > 0 {
			p.partial = append(p.partial, chunk[:keep]...)
			chunk = chunk[keep:]
		}
		if complete && len(chunk) > 0 {
			chunk = chunk[:len(chunk)-1] // the newline ends it; it is not cut
		}
		p.cut += int64(len(chunk))
		if complete {
			p.flush()
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if errors.Is(err, io.EOF) {
			if !follow && (len(p.partial) > 0 || p.cut > 0) {
				p.flush()
			}
			return off, nil
		}
		if err != nil {
			return off, err
		}
	}
}

// flush prints the line held and forgets it.
func (p *logPrinter) flush() {
	p.line(p.partial, p.cut)
	p.reset()
}

// reset forgets a line partly read.
func (p *logPrinter) reset() {
	p.partial, p.cut = p.partial[:0], 0
}

// line prints one line, as stored or rendered, unless below the level;
// cut is how many bytes of it were left out. Its text comes from
// elsewhere (a receiver's stderr line, a peer's error message, what a
// crashing process printed): control characters are escaped, as
// everywhere in the CLI (safeText), so that it cannot drive the terminal.
func (p *logPrinter) line(b []byte, cut int64) {
	b = bytes.TrimRight(b, "\r\n")
	if cut > 0 {
		// Not a whole event: printed as text, whatever the level.
		fmt.Fprintf(p.out, "%s … [line cut: %d more bytes]\n", safeText(string(b)), cut)
		return
	}
	if len(b) == 0 {
		return
	}
	ev, ok := parseLogEvent(b)
	if !p.keeps(ev, ok) {
		return
	}
	switch {
	case !ok:
		fmt.Fprintf(p.out, "%s\n", safeText(string(b)))
		return
	case p.json:
		fmt.Fprintf(p.out, "%s\n", jsonSafe(b))
		return
	}
	var sb strings.Builder
	sb.WriteString(oneLine(ev.time))
	sb.WriteByte(' ')
	fmt.Fprintf(&sb, "%-5s ", ev.level)
	sb.WriteString(oneLine(ev.msg))
	for _, kv := range ev.fields {
		sb.WriteByte(' ')
		sb.WriteString(oneLine(kv[0]))
		sb.WriteByte('=')
		sb.WriteString(kv[1])
	}
	fmt.Fprintln(p.out, sb.String())
}

// shows reports whether line prints line b (cut: bytes of it left out):
// not a blank one, nor an event below the level.
func (p *logPrinter) shows(b []byte, cut int64) bool {
	b = bytes.TrimRight(b, "\r\n")
	if cut > 0 {
		return true // not a whole event: printed as text, whatever the level
	}
	if len(b) == 0 {
		return false
	}
	if p.min == 0 {
		return true
	}
	return p.keeps(parseLogEvent(b))
}

// keeps reports whether a whole line, parsed as ev (isEvent: it is one),
// passes the level: a line that is not an event always does.
func (p *logPrinter) keeps(ev logEvent, isEvent bool) bool {
	return !isEvent || logLevels[ev.level] >= p.min
}

// jsonSafe is a valid JSON log line with the control characters a JSON
// string may hold raw (DEL, C1 such as CSI U+009B; slog writes them as
// they are) written as \u escapes, which mean the same to a JSON reader;
// invalid UTF-8 becomes U+FFFD, as a JSON reader takes it.
func jsonSafe(b []byte) string {
	s := string(b)
	if utf8.ValidString(s) && strings.IndexFunc(s, unsafeRune) < 0 {
		return s
	}
	var sb strings.Builder
	for _, r := range strings.ToValidUTF8(s, "\uFFFD") {
		if unsafeRune(r) {
			fmt.Fprintf(&sb, `\u%04x`, r)
		} else {
			sb.WriteRune(r)
		}
	}
	return sb.String()
}

type logEvent struct {
	time, level, msg string
	fields           [][2]string // in the order logged
}

// parseLogEvent reads one slog JSON line, keeping the order of its fields.
// A string value is printed bare unless it holds a space, a quote, an '='
// or a control character (then quoted, escaped); other values as their
// JSON.
func parseLogEvent(b []byte) (logEvent, bool) {
	var ev logEvent
	if len(b) == 0 || b[0] != '{' || !json.Valid(b) {
		return ev, false
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if _, err := dec.Token(); err != nil { // {
		return ev, false
	}
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			return ev, false
		}
		key, _ := kt.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return ev, false
		}
		var s string
		isString := json.Unmarshal(raw, &s) == nil
		switch {
		case key == "time" && isString && ev.time == "":
			if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
				s = t.UTC().Format("2006-01-02T15:04:05.000Z")
			}
			ev.time = s
		case key == "level" && isString && ev.level == "":
			ev.level = s
		case key == "msg" && isString && ev.msg == "":
			ev.msg = s
		default:
			v := string(raw)
			if isString {
				v = s
				if s == "" || strings.ContainsAny(s, " \"=\t\n") || !utf8.ValidString(s) || strings.IndexFunc(s, unsafeRune) >= 0 {
					v = fmt.Sprintf("%q", s) // escapes control characters
				}
			} else {
				v = oneLine(v)
			}
			ev.fields = append(ev.fields, [2]string{key, v})
		}
	}
	if _, ok := logLevels[ev.level]; !ok || ev.time == "" {
		return ev, false
	}
	return ev, true
}

// errNotRegular is the error of openLogFile for what is not a regular file.
var errNotRegular = errors.New("not a regular file")

// openLogFile opens the log file at path for reading, refusing what is not
// a regular file: a directory cannot be read, and opening a FIFO would
// wait for a writer for ever (deaf to Ctrl-C), so it is opened without
// blocking and checked once open (a check before the open could be raced
// by a rename).
func openLogFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%s is %w (a directory, device or pipe now): the service log cannot be read there", path, errNotRegular)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// followLog keeps printing what is appended to the log at path until ctx
// ends. A rotation (path names another file) starts over at the
// beginning of the new file once what the old one still had is printed; a
// truncation in place (copytruncate) starts over at its beginning.
func followLog(ctx context.Context, path string, fp **os.File, r *bufio.Reader, off int64, p *logPrinter) error {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		var err error
		if off, err = p.copy(r, off, true); err != nil {
			return err
		}
		cur, err := (*fp).Stat()
		if err != nil {
			return err
		}
		now, err := os.Stat(path)
		if err != nil {
			continue // rotated, the new file not made yet
		}
		if !os.SameFile(cur, now) {
			// Rotated: the service writes to the new file, so the old
			// one is complete; finish it first.
			if _, err := p.copy(r, off, false); err != nil {
				return err
			}
			nf, err := openLogFile(path)
			if errors.Is(err, errNotRegular) {
				return err
			}
			if err != nil {
				continue
			}
			(*fp).Close()
			*fp = nf
			r.Reset(nf)
			off = 0
			continue
		}
		if now.Size() < off {
			p.reset()
			if _, err := (*fp).Seek(0, io.SeekStart); err != nil {
				return err
			}
			r.Reset(*fp)
			off = 0
		}
	}
}
