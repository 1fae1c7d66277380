package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/coattail/coattail/node/runner"
	"github.com/spf13/cobra"
)

func newActionCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "action", Short: "Create, list, perform and publish actions"}
	cmd.AddCommand(newActionCreateCmd(a), newActionListCmd(a), newActionPerformCmd(a), newActionPublishCmd(a),
		newActionSubscribeCmd(a), newActionUnsubscribeCmd(a))
	return cmd
}

func newActionCreateCmd(a *app) *cobra.Command {
	var name string
	var receiver bool
	cmd := &cobra.Command{
		Use:   "create --name NAME [--receiver]",
		Short: "Write a ready-to-edit executable action (or receiver)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := a.layout()
			if err != nil {
				return err
			}
			kind := runner.KindAction
			if receiver {
				kind = runner.KindReceiver
			}
			path, err := runner.Create(l.Dir, kind, name)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.out, "Created %s %s at %s\n", kind, name, path)
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "action name: a subject such as orders.created (ASCII letters, digits, '_', '-', tokens separated by '.')")
	cmd.Flags().BoolVar(&receiver, "receiver", false, "create a receiver instead of an action")
	_ = cmd.MarkFlagRequired("name")
	return cmd
}

func newActionListCmd(a *app) *cobra.Command {
	var receivers, asJSON bool
	var peer string
	cmd := &cobra.Command{
		Use:   "list [--receivers] [--peer ID]",
		Short: "List actions (or receivers) here, or the actions a peer lets you use",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := notEmpty(cmd, "peer"); err != nil {
				return err
			}
			return a.withConn(cmd.Context(), func(c *node.Conn) error {
				acts, err := c.Actions(cmd.Context(), receivers, peer)
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(a.out, acts)
				}
				if len(acts) == 0 {
					what := "actions"
					if receivers {
						what = "receivers"
					}
					fmt.Fprintf(a.out, "No %s.\n", what)
					return nil
				}
				rows := [][]string{}
				if peer != "" {
					for _, x := range acts {
						rows = append(rows, []string{x.Name, yes(x.Performable), yes(x.Publishable), yes(x.Subscribable)})
					}
					return table(a.out, []string{"ACTION", "PERFORM", "PUBLISH", "SUBSCRIBE"}, rows)
				}
				for _, x := range acts {
					src := x.Path
					if x.Skipped != "" {
						src += " (skipped: " + x.Skipped + ")"
					} else if x.InProcess {
						src = "(in-process)"
					} else if !x.Executable {
						src += " (not executable: chmod +x)"
					}
					rows = append(rows, []string{x.Name, src})
				}
				return table(a.out, []string{"NAME", "SOURCE"}, rows)
			})
		},
	}
	cmd.Flags().BoolVar(&receivers, "receivers", false, "list receivers")
	cmd.Flags().StringVar(&peer, "peer", "", "list a peer's actions")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func yes(b *bool) string {
	if b != nil && *b {
		return "yes"
	}
	return "no"
}

// hopFromEnv continues a cascade: a receiver that performs with --notify
// passes on the hop count of the publication that triggered it.
// hopFromEnv returns the hop of a perform or publish: one more than the
// COATTAIL_HOP of the receiver running this command (a cascade), 0 outside
// one. A value that is not a hop count is refused rather than read as 0,
// which would restart the count that stops cascade loops.
func hopFromEnv() (int, error) {
	v, ok := os.LookupEnv("COATTAIL_HOP")
	if !ok || v == "" {
		return 0, nil
	}
	h, err := strconv.ParseUint(v, 10, 31)
	if err != nil {
		return 0, fmt.Errorf("COATTAIL_HOP=%.40q is not a hop count (a receiver's environment sets it; unset it outside one)", v)
	}
	return int(h) + 1, nil
}

// runFromEnv names the receiver run this perform or publish is made from
// (nil outside one): a cascade the service refuses for limits.max_hops
// then parks that run's publication at once when the receiver fails,
// rather than retrying it. Variables that are not the service's are not
// an error: without them, the failure is only retried as any other.
func runFromEnv() *localapi.ReceiverRun {
	key, sub := os.Getenv("COATTAIL_RUN"), os.Getenv("COATTAIL_SUBSCRIPTION")
	seq, err := strconv.ParseUint(os.Getenv("COATTAIL_SEQUENCE"), 10, 64)
	if key == "" || sub == "" || err != nil {
		return nil
	}
	return &localapi.ReceiverRun{Key: key, Subscription: sub, Sequence: seq}
}

func parseData(s string) (json.RawMessage, error) {
	if strings.TrimSpace(s) == "" {
		return json.RawMessage("null"), nil
	}
	if !json.Valid([]byte(s)) {
		return nil, fmt.Errorf("--data is not valid JSON: %.80q", s)
	}
	return json.RawMessage(s), nil
}

// maxStdinInput bounds what `action perform --stdin` reads: the control
// API takes request bodies up to 70 MiB, and the service refuses an input
// over its limits.max_payload with its own message.
const maxStdinInput = 64 << 20

// readStdinInput reads all of r as one JSON value, the input of a perform.
func readStdinInput(r io.Reader) (json.RawMessage, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxStdinInput+1))
	if err != nil {
		return nil, fmt.Errorf("reading stdin: %w", err)
	}
	if len(b) > maxStdinInput {
		return nil, fmt.Errorf("stdin is larger than %d MiB (an input is at most the service's limits.max_payload)", maxStdinInput>>20)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, fmt.Errorf("stdin is empty: --stdin takes the input as one JSON value (for no input, leave out --stdin)")
	}
	if !json.Valid(b) {
		return nil, fmt.Errorf("stdin is not one valid JSON value (%d bytes; for one publication per line use action publish --stdin)", len(b))
	}
	return json.RawMessage(bytes.TrimSpace(b)), nil
}

func newActionPerformCmd(a *app) *cobra.Command {
	var req localapi.PerformRequest
	var data string
	var quiet, fromStdin bool
	cmd := &cobra.Command{
		Use:   "perform --action NAME [--data JSON | --stdin] [--notify [--to ID,...]] [--peer ID] [-q]",
		Short: "Run an action here or on a peer and print its JSON output",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := notEmpty(cmd, "peer", "to"); err != nil {
				return err
			}
			var in json.RawMessage
			var err error
			if fromStdin {
				if cmd.Flags().Changed("data") {
					return fmt.Errorf("--stdin and --data cannot be combined")
				}
				in, err = readStdinInput(a.in)
			} else {
				in, err = parseData(data)
			}
			if err != nil {
				return err
			}
			req.Input = in
			if req.Hop, err = hopFromEnv(); err != nil {
				return err
			}
			req.Run = runFromEnv()
			return a.withConn(cmd.Context(), func(c *node.Conn) error {
				res, err := c.Perform(cmd.Context(), req, func(line string) {
					if !quiet {
						fmt.Fprintf(a.err, "[%s] %s\n", req.Action, safeText(line))
					}
				})
				if err != nil {
					return err
				}
				fmt.Fprintln(a.out, string(res.Output))
				if req.Notify && !quiet {
					fmt.Fprintf(a.err, "published to %d subscription(s)%s\n", res.Published, droppedNote(res.Dropped))
					a.hintNoneOfTo(req.To, res.Published, req.Action, req.Peer)
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&req.Action, "action", "", "action name (subject)")
	cmd.Flags().StringVar(&data, "data", "", "JSON input (default null)")
	cmd.Flags().BoolVar(&fromStdin, "stdin", false, "read the JSON input from stdin (one value, up to 64 MiB; for inputs too large for an argument)")
	cmd.Flags().BoolVar(&req.Notify, "notify", false, "publish the output to the action's subscribers")
	cmd.Flags().StringVar(&req.Peer, "peer", "", "perform on this peer instead of here")
	cmd.Flags().StringSliceVar(&req.To, "to", nil, "with --notify: only notify subscribers with these peer ids")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "do not print the action's log lines, nor (with --notify) how many subscriptions it was published to")
	_ = cmd.MarkFlagRequired("action")
	return cmd
}

func newActionPublishCmd(a *app) *cobra.Command {
	var req localapi.PublishRequest
	var data string
	var fromStdin bool
	cmd := &cobra.Command{
		Use:   "publish --action NAME [--data JSON | --stdin] [--to ID,...] [--peer ID]",
		Short: "Publish data to an action's subscribers without performing it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := notEmpty(cmd, "peer", "to"); err != nil {
				return err
			}
			var err error
			if req.Hop, err = hopFromEnv(); err != nil {
				return err
			}
			req.Run = runFromEnv()
			if fromStdin {
				if cmd.Flags().Changed("data") {
					return fmt.Errorf("--stdin and --data cannot be combined")
				}
				return a.withConn(cmd.Context(), func(c *node.Conn) error { return a.publishLines(cmd, c, req) })
			}
			d, err := parseData(data)
			if err != nil {
				return err
			}
			req.Data = d
			return a.withConn(cmd.Context(), func(c *node.Conn) error {
				res, err := c.Publish(cmd.Context(), req)
				if err != nil {
					return err
				}
				fmt.Fprintf(a.out, "published to %d subscription(s)%s\n", res.Published, droppedNote(res.Dropped))
				a.hintNoneOfTo(req.To, res.Published, req.Action, req.Peer)
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&req.Action, "action", "", "action name (subject)")
	cmd.Flags().StringVar(&data, "data", "", "JSON data (default null)")
	cmd.Flags().StringVar(&req.Peer, "peer", "", "publish on this peer (needs its publish permission)")
	cmd.Flags().StringSliceVar(&req.To, "to", nil, "only notify subscribers with these peer ids (not with --peer: a peer chooses its own subscribers)")
	cmd.Flags().BoolVar(&fromStdin, "stdin", false, "publish one message per line of stdin (each line a JSON value), in batches")
	_ = cmd.MarkFlagRequired("action")
	return cmd
}

// droppedNote is what the line saying where a publication went adds when
// it pushed undelivered ones out of full queues (limits.queue_full:
// drop_oldest): the oldest go first, a batch's own first ones too when it
// is larger than a queue's bound, and the count of queue entries written
// includes those. Without it, publications dropped at once were reported
// as queued, and only the dropped counter showed otherwise.
func droppedNote(n uint64) string {
	switch n {
	case 0:
		return ""
	case 1:
		return "; 1 undelivered queue entry dropped to make room (limits.queue_full: drop_oldest)"
	}
	return fmt.Sprintf("; %d undelivered queue entries dropped to make room (limits.queue_full: drop_oldest)", n)
}

// hintNoneOfTo says on stderr, when a publication restricted with --to
// reached no subscription, that none of those peers holds a matching one:
// a wrong peer id or subject otherwise passes without a word (exit 0: a
// publication with no subscribers is not an error).
func (a *app) hintNoneOfTo(to []string, published int, subject, peer string) {
	if len(to) == 0 || published > 0 {
		return
	}
	where := "here (see: coattail subscribers list)"
	if peer != "" {
		where = "at " + peer + " (its subscribers list shows them)"
	}
	fmt.Fprintf(a.err, "note: none of the --to peer(s) holds a subscription matching %q %s\n", subject, where)
}

// A publish call carries at most publishBatch stdin lines and about
// publishBatchBytes of them (the control API takes bodies up to 70 MiB; a
// line may be as large as limits.max_payload).
const (
	publishBatch      = 4096
	publishBatchBytes = 16 << 20
	// maxStdinLine bounds one stdin line (the scanner's buffer).
	maxStdinLine = 64 << 20
)

// publishLines publishes each stdin line as one message, in batches, and
// reports the total. An error says, as the total would have, what the
// batches published before it dropped (limits.queue_full: drop_oldest).
func (a *app) publishLines(cmd *cobra.Command, c *node.Conn, req localapi.PublishRequest) (err error) {
	sc := bufio.NewScanner(a.in)
	sc.Buffer(make([]byte, 64<<10), maxStdinLine)
	// nums: the stdin line number of each line in req.Batch.
	total, lines, published, lineNo, batchBytes := 0, 0, 0, 0, 0
	var dropped uint64
	defer func() {
		if err != nil && dropped > 0 {
			err = fmt.Errorf("%w%s", err, droppedNote(dropped))
		}
	}()
	var nums []int
	batch := req
	// publish sends the lines of part (numbered partNums) in one call.
	var publish func(part []json.RawMessage, partNums []int) error
	publish = func(part []json.RawMessage, partNums []int) error {
		first, last := partNums[0], partNums[len(partNums)-1]
		batch.Batch = part
		res, err := c.Publish(cmd.Context(), batch)
		if err == nil {
			total += res.Published
			dropped += res.Dropped
			published += len(part)
			return nil
		}
		// No answer (the service went away), or the service stopped
		// while it published (it may have queued the batch before it
		// noticed): the batch may or may not have been stored, and
		// publishing it again blindly could publish it twice.
		var answered *localapi.Error
		if !errors.As(err, &answered) {
			return fmt.Errorf("%d line(s) before stdin line %d were published; the batch of stdin lines %d-%d (%d line(s)) got no answer, so it may or may not have been published: %w",
				published, first, first, last, len(part), err)
		}
		if answered.Interrupted {
			return fmt.Errorf("%d line(s) before stdin line %d were published; the service stopped while it published the batch of stdin lines %d-%d (%d line(s)), so it may or may not have been published",
				published, first, first, last, len(part))
		}
		// A full queue (queue_full: reject) or a low disk refuses a
		// local batch whole, queueing nothing of it, though fewer lines
		// may fit: each line is a publication of its own, so the batch is
		// halved until the lines published are all those that fit, and
		// the line refused is the first that does not, however lines
		// were batched. (A batch larger than queue_bound was refused at
		// every try, even into an empty queue.) A peer (--peer) may
		// have stored part of a batch: not retried.
		if answered.Status == http.StatusInsufficientStorage && req.Peer == "" && len(part) > 1 {
			h := len(part) / 2
			if err := publish(part[:h], partNums[:h]); err != nil {
				return err
			}
			return publish(part[h:], partNums[h:])
		}
		// One line refused (over limits.max_payload, here or at the
		// peer): nothing of the batch was published but its first Done
		// lines (a peer stored the frames before the one it refused);
		// the rest of the lines before it are published, as before a
		// line found not to be JSON here.
		if k, done := answered.Item-1, answered.Done; k >= 0 && k < len(part) && done >= 0 && done <= k &&
			(answered.Status == http.StatusBadRequest || answered.Status == http.StatusBadGateway && req.Peer != "") {
			published += done
			if k > done {
				if err := publish(part[done:k], partNums[done:k]); err != nil {
					return err
				}
			}
			line := partNums[k]
			// The service numbers the item in the batch; here it is a line.
			why := strings.Replace(answered.Message, fmt.Sprintf(" (item %d)", answered.Item), "", 1)
			return fmt.Errorf("stdin line %d was refused: %s: the %d line(s) before it were published, none from it on", line, why, published)
		}
		if first == last {
			return fmt.Errorf("%d line(s) before stdin line %d were published; stdin line %d was refused: %w", published, first, first, err)
		}
		return fmt.Errorf("%d line(s) before stdin line %d were published; the batch of stdin lines %d-%d was refused: %w", published, first, first, last, err)
	}
	send := func() error {
		if len(req.Batch) == 0 {
			return nil
		}
		err := publish(req.Batch, nums)
		req.Batch, nums, batchBytes = req.Batch[:0], nums[:0], 0
		return err
	}
	for sc.Scan() {
		lineNo++
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		lines++
		// JSON in UTF-8, as the service takes it: a line it would refuse
		// would take the lines batched with it along.
		if !json.Valid(line) || !utf8.Valid(line) {
			// Everything before it is published, nothing from it on: where
			// to start again does not depend on how lines were batched.
			if err := send(); err != nil {
				return err
			}
			return fmt.Errorf("stdin line %d is not valid JSON: the %d line(s) before it were published, none from it on", lineNo, published)
		}
		if len(req.Batch) > 0 && batchBytes+len(line) > publishBatchBytes {
			if err := send(); err != nil {
				return err
			}
		}
		nums = append(nums, lineNo)
		req.Batch = append(req.Batch, json.RawMessage(bytes.Clone(line)))
		batchBytes += len(line)
		if len(req.Batch) >= publishBatch {
			if err := send(); err != nil {
				return err
			}
		}
	}
	if err := sc.Err(); err != nil {
		if serr := send(); serr != nil {
			return serr
		}
		if errors.Is(err, bufio.ErrTooLong) {
			return fmt.Errorf("stdin line %d is longer than %d MiB (a publication is at most limits.max_payload): the %d line(s) before it were published, none from it on", lineNo+1, maxStdinLine>>20, published)
		}
		return fmt.Errorf("reading stdin after line %d: %w (the %d line(s) before it were published)", lineNo, err, published)
	}
	if err := send(); err != nil {
		return err
	}
	fmt.Fprintf(a.out, "published %d message(s) to %d subscription queue entries%s\n", lines, total, droppedNote(dropped))
	return nil
}
