package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/spf13/cobra"
)

// subscribeFlags are shared by action subscribe and action unsubscribe.
func subscribeFlags(cmd *cobra.Command, r *localapi.SubscribeRequest) {
	cmd.Flags().StringVar(&r.Peer, "peer", "", "peer id of the publisher")
	cmd.Flags().StringVar(&r.Pattern, "action", "", "action subject or pattern (orders.*, orders.>)")
	cmd.Flags().StringVar(&r.Receiver, "receiver", "", "local receiver that handles the publications")
	_ = cmd.MarkFlagRequired("peer")
	_ = cmd.MarkFlagRequired("action")
}

func newActionSubscribeCmd(a *app) *cobra.Command {
	var req localapi.SubscribeRequest
	cmd := &cobra.Command{
		Use:   "subscribe --peer ID --action PATTERN --receiver NAME",
		Short: "Subscribe a local receiver to a peer's action (wildcards allowed)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := notEmpty(cmd, "peer", "receiver"); err != nil {
				return err
			}
			return a.withConn(cmd.Context(), func(c *node.Conn) error {
				s, err := c.Subscribe(cmd.Context(), req)
				if err != nil {
					return err
				}
				fmt.Fprintln(a.out, s.ID)
				if s.Existing {
					fmt.Fprintf(a.err, "Receiver %s is already subscribed to %s at %s\n", s.Receiver, s.Pattern, s.Publisher)
					return nil
				}
				fmt.Fprintf(a.err, "Subscribed receiver %s to %s at %s\n", s.Receiver, s.Pattern, s.Publisher)
				return nil
			})
		},
	}
	subscribeFlags(cmd, &req)
	_ = cmd.MarkFlagRequired("receiver")
	return cmd
}

func newActionUnsubscribeCmd(a *app) *cobra.Command {
	var req localapi.SubscribeRequest
	cmd := &cobra.Command{
		Use:   "unsubscribe --peer ID --action PATTERN [--receiver NAME]",
		Short: "End a subscription on both sides",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := notEmpty(cmd, "peer", "receiver"); err != nil {
				return err
			}
			return a.withConn(cmd.Context(), func(c *node.Conn) error {
				r, err := c.Unsubscribe(cmd.Context(), req)
				if err != nil {
					return err
				}
				fmt.Fprintf(a.out, "Removed %d subscription(s)\n", r.Removed)
				if len(r.Untold) > 0 {
					fmt.Fprintf(a.err, "The publisher could not be told that %d subscription(s) ended (%s); it removes them when it next tries to deliver to this instance.\n",
						len(r.Untold), safeText(strings.Join(r.Untold, ", ")))
				}
				return nil
			})
		},
	}
	subscribeFlags(cmd, &req)
	cmd.Flags().BoolVar(&req.Force, "force", false, "forget the subscription here even if the publisher cannot be told")
	return cmd
}

func newSubscriptionsCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "subscriptions", Short: "Subscriptions this instance holds at publishers"}
	var asJSON bool
	ls := &cobra.Command{
		Use:   "list",
		Short: "List what this instance is subscribed to, where, and with which receiver",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withConn(cmd.Context(), func(c *node.Conn) error {
				subs, err := c.Subscriptions(cmd.Context())
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(a.out, subs)
				}
				if len(subs) == 0 {
					fmt.Fprintln(a.out, "No subscriptions.")
					return nil
				}
				rows := [][]string{}
				for _, s := range subs {
					rows = append(rows, []string{s.ID, s.Publisher, s.Pattern, s.Receiver, strconv.FormatUint(s.LastSeq, 10), streamPath(s.Connected, s.Path)})
				}
				return table(a.out, []string{"ID", "PUBLISHER", "PATTERN", "RECEIVER", "LAST SEQ", "CONNECTED"}, rows)
			})
		},
	}
	ls.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.AddCommand(ls)
	return cmd
}

func newSubscribersCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "subscribers", Short: "Subscriptions peers hold at this instance"}
	var asJSON bool
	ls := &cobra.Command{
		Use:   "list",
		Short: "List subscribers: peer, pattern, token, queue depth, last delivery",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withConn(cmd.Context(), func(c *node.Conn) error {
				subs, err := c.Subscribers(cmd.Context())
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(a.out, subs)
				}
				if len(subs) == 0 {
					fmt.Fprintln(a.out, "No subscribers.")
					return nil
				}
				rows := [][]string{}
				for _, s := range subs {
					rows = append(rows, []string{s.ID, s.Subscriber, s.Pattern, s.TokenID, strconv.FormatUint(s.Depth, 10),
						strconv.FormatUint(s.Delivered, 10), when(s.LastDelivered, "-"), streamPath(s.Connected, s.Path)})
				}
				if err := table(a.out, []string{"ID", "SUBSCRIBER", "PATTERN", "SUBSCRIBED WITH TOKEN", "QUEUE", "DELIVERED", "LAST DELIVERED", "CONNECTED"}, rows); err != nil {
					return err
				}
				for _, s := range subs {
					if s.Corrupt > 0 {
						fmt.Fprintf(a.err, "Warning: subscription %s lost %d queued publication(s): their stored entries were damaged (service.log has each)\n", s.ID, s.Corrupt)
					}
				}
				return nil
			})
		},
	}
	ls.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	rv := &cobra.Command{
		Use:   "revoke <id>",
		Short: "Remove a subscriber's subscription (the subscriber is told)",
		Args:  oneID("subscription id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withConn(cmd.Context(), func(c *node.Conn) error {
				if err := c.RevokeSubscriber(cmd.Context(), args[0]); err != nil {
					return err
				}
				fmt.Fprintf(a.out, "Revoked subscription %s\n", args[0])
				return nil
			})
		},
	}
	cmd.AddCommand(ls, rv)
	return cmd
}

func newDeadLettersCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "deadletters", Short: "Publications whose receiver kept failing"}
	var (
		asJSON, withData bool
		limit            int
		after            string
	)
	ls := &cobra.Command{
		Use:   "list",
		Short: "List parked publications, a page at a time",
		Long: `List parked publications in id order (by subscription, then sequence),
--limit at a time (default 100; 0 lists them all). When more follow, --json
says so ("more": true, "next": the id to pass to --after) and the table ends
with a hint on stderr. --data adds each publication's data to --json.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case limit < 0:
				return fmt.Errorf("--limit %d: give how many dead letters to list (0 lists them all)", limit)
			case cmd.Flags().Changed("after") && strings.TrimSpace(after) == "":
				return fmt.Errorf("--after needs the id of a dead letter to list after (see: %s)", cmd.CommandPath())
			case withData && !asJSON:
				return fmt.Errorf("--data goes with --json: the table does not show publications")
			}
			return a.withConn(cmd.Context(), func(c *node.Conn) error {
				list, err := listDeadLetters(cmd, c, limit, after, withData)
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(a.out, list)
				}
				switch {
				case len(list.DeadLetters) > 0:
					rows := [][]string{}
					for _, d := range list.DeadLetters {
						rows = append(rows, []string{d.ID, d.Receiver, d.Subject, strconv.Itoa(d.Attempts), d.FailedAt.Local().Format(time.RFC3339), d.Error})
					}
					if err := table(a.out, []string{"ID", "RECEIVER", "SUBJECT", "ATTEMPTS", "FAILED", "ERROR"}, rows); err != nil {
						return err
					}
				case after != "":
					fmt.Fprintf(a.out, "No dead letters after %s.\n", safeText(after))
				default:
					fmt.Fprintln(a.out, "No dead letters.")
				}
				if list.More {
					fmt.Fprintf(a.err, "More dead letters follow; list them with: %s\n", nextPageCommand(cmd, a.instance, limit, list.Next))
				}
				return nil
			})
		},
	}
	ls.Flags().BoolVar(&asJSON, "json", false, "print JSON: {\"dead_letters\": [...], \"more\": bool, \"next\": id}")
	ls.Flags().IntVar(&limit, "limit", localapi.DefaultDeadLetterPage, "list at most this many (0: all)")
	ls.Flags().StringVar(&after, "after", "", "list the dead letters after this id (the previous page's last, or \"next\" of --json)")
	ls.Flags().BoolVar(&withData, "data", false, "include each publication's data (with --json)")
	var all bool
	var onlySub string
	replay := &cobra.Command{
		Use:   "replay <id> | --all [--subscription ID]",
		Short: "Run the receiver again; on success the publication leaves the list",
		Long: `Run a parked publication's receiver again; on success the publication leaves
the list. --all replays every dead letter (of one subscription with
--subscription), in id order (by subscription, then sequence), and stops at
the first that fails again: the receiver is likely still broken, and the
rest stay parked.`,
		Args: idOrAll(&all, &onlySub),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withConn(cmd.Context(), func(c *node.Conn) error {
				// The receiver's stderr lines, prefixed with its name as
				// perform prefixes an action's.
				replayOne := func(id, receiver string) error {
					return c.ReplayDeadLetter(cmd.Context(), id, func(l string) {
						if receiver == "" {
							fmt.Fprintln(a.err, safeText(l))
							return
						}
						fmt.Fprintf(a.err, "[%s] %s\n", receiver, safeText(l))
					})
				}
				if !all {
					if err := replayOne(args[0], deadLetterReceiver(cmd, c, args[0])); err != nil {
						return err
					}
					fmt.Fprintf(a.out, "Replayed %s\n", args[0])
					return nil
				}
				if err := knownDeadLetterSubscription(cmd, c, onlySub); err != nil {
					return err
				}
				n, err := eachDeadLetter(cmd, c, onlySub, func(d localapi.DeadLetter) error {
					if err := replayOne(d.ID, d.Receiver); err != nil {
						return fmt.Errorf("%s failed again (it stays parked, with those after it): %w", d.ID, err)
					}
					fmt.Fprintf(a.out, "Replayed %s\n", d.ID)
					return nil
				})
				if err != nil {
					return fmt.Errorf("replayed %d dead letter(s); %w", n, err)
				}
				fmt.Fprintf(a.out, "Replayed %d dead letter(s)\n", n)
				return nil
			})
		},
	}
	replay.Flags().BoolVar(&all, "all", false, "replay every dead letter (of --subscription), stopping at the first that fails again")
	replay.Flags().StringVar(&onlySub, "subscription", "", "with --all: only this subscription's dead letters")
	var dropAll bool
	var dropSub string
	drop := &cobra.Command{
		Use:   "drop <id> | --all [--subscription ID]",
		Short: "Delete a parked publication",
		Long: `Delete a parked publication (its receiver is not run). --all deletes every
dead letter (of one subscription with --subscription).`,
		Args: idOrAll(&dropAll, &dropSub),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withConn(cmd.Context(), func(c *node.Conn) error {
				if !dropAll {
					if err := c.DropDeadLetter(cmd.Context(), args[0]); err != nil {
						return err
					}
					fmt.Fprintf(a.out, "Dropped %s\n", args[0])
					return nil
				}
				if err := knownDeadLetterSubscription(cmd, c, dropSub); err != nil {
					return err
				}
				n, err := eachDeadLetter(cmd, c, dropSub, func(d localapi.DeadLetter) error { return c.DropDeadLetter(cmd.Context(), d.ID) })
				if err != nil {
					return fmt.Errorf("dropped %d dead letter(s); %w", n, err)
				}
				fmt.Fprintf(a.out, "Dropped %d dead letter(s)\n", n)
				return nil
			})
		},
	}
	drop.Flags().BoolVar(&dropAll, "all", false, "delete every dead letter (of --subscription)")
	drop.Flags().StringVar(&dropSub, "subscription", "", "with --all: only this subscription's dead letters")
	cmd.AddCommand(ls, replay, drop)
	return cmd
}

// idOrAll takes one dead letter id, or none with --all (and --subscription
// only with --all).
func idOrAll(all *bool, sub *string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		switch {
		case *all && len(args) > 0:
			return fmt.Errorf("give a dead letter id or --all, not both (see: %s --help)", cmd.CommandPath())
		case cmd.Flags().Changed("subscription") && !*all:
			return fmt.Errorf("--subscription goes with --all (see: %s --help)", cmd.CommandPath())
		case cmd.Flags().Changed("subscription") && strings.TrimSpace(*sub) == "":
			return fmt.Errorf("--subscription needs a subscription id (see: coattail subscriptions list)")
		case *all:
			return nil
		}
		return oneID("dead letter id")(cmd, args)
	}
}

// knownDeadLetterSubscription fails unless sub (given: --subscription) is
// a subscription this instance holds, or one whose dead letters are still
// parked (they outlive it): a mistyped id, or a dead letter's id given for
// it, would otherwise replay or drop nothing and say so as a success.
func knownDeadLetterSubscription(cmd *cobra.Command, c *node.Conn, sub string) error {
	if sub == "" {
		return nil
	}
	subs, err := c.Subscriptions(cmd.Context())
	if err != nil {
		return err
	}
	for _, s := range subs {
		if s.ID == sub {
			return nil
		}
	}
	page, err := c.DeadLetters(cmd.Context(), localapi.DeadLetterQuery{After: localapi.DeadLetterID(sub, 0), Limit: 1})
	var lerr *localapi.Error
	switch {
	case err == nil && len(page.DeadLetters) > 0 && page.DeadLetters[0].Subscription == sub:
		return nil
	case err != nil && !(errors.As(err, &lerr) && lerr.Code == localapi.CodeBadRequest):
		return err
	}
	// A bad request: no subscription id makes a dead letter id.
	msg := fmt.Sprintf("--subscription %s: no subscription with that id here, and no dead letters of one", safeText(strconv.Quote(sub)))
	if _, _, ok := localapi.ParseDeadLetterID(sub); ok {
		return fmt.Errorf("%s (it is a dead letter's id: give it without --all and --subscription)", msg)
	}
	return fmt.Errorf("%s (see: coattail subscriptions list, coattail deadletters list)", msg)
}

// eachDeadLetter calls fn with the id of every dead letter (of
// subscription sub, when not empty), in id order, until fn fails, and
// returns how many it handled. The list is read a page at a time, each
// from the last id handled on: fn may delete what it was given.
func eachDeadLetter(cmd *cobra.Command, c *node.Conn, sub string, fn func(d localapi.DeadLetter) error) (int, error) {
	n, after := 0, ""
	if sub != "" {
		after = localapi.DeadLetterID(sub, 0) // the first of sub's follows it
	}
	for {
		page, err := c.DeadLetters(cmd.Context(), localapi.DeadLetterQuery{After: after, Limit: localapi.MaxDeadLetterPage})
		if err != nil {
			return n, err
		}
		for _, d := range page.DeadLetters {
			if sub != "" && d.Subscription != sub {
				return n, nil // past the subscription's
			}
			if err := fn(d); err != nil {
				return n, err
			}
			n++
			after = d.ID
		}
		if !page.More || len(page.DeadLetters) == 0 {
			return n, nil
		}
	}
}

// deadLetterReceiver returns the receiver of dead letter id ("" when it
// cannot tell: the replay then says what is wrong with id). The list after
// the id of the sequence before it starts with it.
func deadLetterReceiver(cmd *cobra.Command, c *node.Conn, id string) string {
	sub, seq, ok := localapi.ParseDeadLetterID(id)
	if !ok || seq == 0 {
		return ""
	}
	page, err := c.DeadLetters(cmd.Context(), localapi.DeadLetterQuery{After: localapi.DeadLetterID(sub, seq-1), Limit: 1})
	if err != nil || len(page.DeadLetters) == 0 || page.DeadLetters[0].ID != id {
		return ""
	}
	return page.DeadLetters[0].Receiver
}

// nextPageCommand is the command that lists the page after next: this
// one with --after next, keeping the --instance and --limit it was given,
// so that a page of 10 is followed by another page of 10 of the same
// instance.
func nextPageCommand(cmd *cobra.Command, instance string, limit int, next string) string {
	parts := []string{cmd.CommandPath()}
	if cmd.Flags().Changed("instance") {
		parts = append(parts, "--instance", shellArg(instance))
	}
	if cmd.Flags().Changed("limit") {
		parts = append(parts, "--limit", strconv.Itoa(limit))
	}
	parts = append(parts, "--after", shellArg(next))
	return safeText(strings.Join(parts, " "))
}

// shellArg quotes s for a POSIX shell unless it needs no quoting.
func shellArg(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+=:,./-") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// listDeadLetters reads limit dead letters (all for 0) after after, in
// pages of at most localapi.MaxDeadLetterPage: the service answers no
// more at once, and a page with data may end early to stay within the
// answer's budget.
func listDeadLetters(cmd *cobra.Command, c *node.Conn, limit int, after string, data bool) (localapi.DeadLetterList, error) {
	out := localapi.DeadLetterList{DeadLetters: []localapi.DeadLetter{}}
	q := localapi.DeadLetterQuery{After: after, Data: data}
	for {
		q.Limit = localapi.MaxDeadLetterPage
		if limit > 0 {
			q.Limit = min(q.Limit, limit-len(out.DeadLetters))
		}
		page, err := c.DeadLetters(cmd.Context(), q)
		if err != nil {
			return localapi.DeadLetterList{}, err
		}
		out.DeadLetters = append(out.DeadLetters, page.DeadLetters...)
		out.More, out.Next = page.More, page.Next
		if !page.More || limit > 0 && len(out.DeadLetters) >= limit || page.Next == "" {
			return out, nil
		}
		q.After = page.Next
	}
}
