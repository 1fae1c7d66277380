package main

import (
	"bufio"
	"errors"
	"fmt"
	"golang.org/x/term"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/coattail/coattail/auth"
	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/spf13/cobra"
	"github.com/xhit/go-str2duration/v2"
)

func newTokenCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Issue, list, show, revoke and decode capability tokens"}
	cmd.AddCommand(newTokenIssueCmd(a), newTokenListCmd(a), newTokenShowCmd(a), newTokenRevokeCmd(a), newTokenPruneCmd(a), newTokenIssuerCmd(a), newTokenDecodeCmd(a))
	return cmd
}

// lifetimeFlags are --not-before and --expires-in, shared by token and
// validation issue.
type lifetimeFlags struct {
	notBefore, expiresIn string
	printRaw, quiet      bool
}

func (f *lifetimeFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.notBefore, "not-before", "", "usable only after this long from now (30s, 10m, 2h, 1d, 1w, 1y, \"2 days\")")
	cmd.Flags().StringVar(&f.expiresIn, "expires-in", "", "expires this long from now (30s, 10m, 2h, 1d, 1w, 1y, \"2 days\"; default: never)")
	cmd.Flags().BoolVar(&f.printRaw, "print-raw-token", false, "print the raw token (without it, the token is copied to the clipboard when a clipboard tool and a display are found, else printed)")
	cmd.Flags().BoolVar(&f.quiet, "quiet", false, "leave out the token's details: only the raw token (or the clipboard notice)")
}

// parseDurationFlag reads the duration flag --name (30s, 10m, 2h, 1d, 1w,
// a sum such as 1w2d, or the original Coattail's form: see msDuration);
// "" is 0.
func parseDurationFlag(name, s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := str2duration.ParseDuration(s)
	if err != nil && durationSyntax.MatchString(s) {
		// Well-formed, so it failed on overflow.
		return 0, durationTooLong(name, s)
	}
	if err != nil {
		if m := msDuration.FindStringSubmatch(s); m != nil {
			return msDurationValue(name, s, m[1], m[2])
		}
		if bareNumber.MatchString(s) {
			return 0, fmt.Errorf("--%s %q needs a unit, such as %[2]ss, %[2]sm, %[2]sh or %[2]sd (the original Coattail read a bare number as milliseconds)", name, s)
		}
	}
	if err != nil || d < 0 {
		return 0, fmt.Errorf("--%s %q: use a duration such as 30s, 10m, 2h, 1d, 1w or \"2 days\"", name, s)
	}
	return d, nil
}

func durationTooLong(name, s string) error {
	return fmt.Errorf("--%s %q is too long: at most %s (about 292 years)", name, s, maxDurationText)
}

// msDuration is the duration syntax of the original Coattail, whose
// README says "all timestamps use vercel/ms format": one number, spaces
// or none, and a unit, short or long, in any case ("2 days", "1 week",
// "1y", "1.5 hrs", "2W"). A year is 365.25 days, as there.
var msDuration = regexp.MustCompile(`(?i)^(\d+(?:\.\d+)?|\.\d+) *(milliseconds?|msecs?|ms|seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h|days?|d|weeks?|w|years?|yrs?|y)$`)

// bareNumber is a number without a unit, which vercel/ms read as
// milliseconds: refused rather than taken for a token that expires at once.
var bareNumber = regexp.MustCompile(`^(\d+(\.\d*)?|\.\d+)$`)

// msDurationValue is the duration of a string msDuration matched, with
// its number num and unit unit.
func msDurationValue(name, s, num, unit string) (time.Duration, error) {
	v, err := strconv.ParseFloat(num, 64)
	if errors.Is(err, strconv.ErrRange) {
		return 0, durationTooLong(name, s) // overflow: too many digits for a float
	}
	if err != nil {
		return 0, fmt.Errorf("--%s %q: %v", name, s, err)
	}
	u := strings.ToLower(unit)
	var per time.Duration
	switch {
	case u == "ms" || strings.HasPrefix(u, "msec") || strings.HasPrefix(u, "millisecond"):
		per = time.Millisecond
	case u[0] == 's':
		per = time.Second
	case u[0] == 'm':
		per = time.Minute
	case u[0] == 'h':
		per = time.Hour
	case u[0] == 'd':
		per = 24 * time.Hour
	case u[0] == 'w':
		per = 7 * 24 * time.Hour
	default: // y, yr, yrs, year, years
		per = 36525 * 24 * time.Hour / 100
	}
	ns := math.Round(v * float64(per))
	if ns >= math.MaxInt64 {
		return 0, durationTooLong(name, s)
	}
	return time.Duration(ns), nil
}

func (f *lifetimeFlags) durations() (nbf, exp time.Duration, err error) {
	if nbf, err = parseDurationFlag("not-before", f.notBefore); err != nil {
		return
	}
	if exp, err = parseDurationFlag("expires-in", f.expiresIn); err != nil {
		return
	}
	// An expiry of 0 means "never" to the control API: a token asked to
	// expire at once must not become one that never expires.
	if f.expiresIn != "" && exp == 0 {
		return 0, 0, fmt.Errorf("--expires-in %q must be longer than 0 (leave it out for a token that never expires)", f.expiresIn)
	}
	return
}

// durationSyntax is what str2duration.ParseDuration accepts; a string
// matching it that does not parse is too long for a time.Duration.
var durationSyntax = regexp.MustCompile(`^[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d|w))+$`)

// maxDurationText is the longest time.Duration in the units --expires-in
// takes (math.MaxInt64 nanoseconds, rounded down to the second).
const maxDurationText = "15250w1d23h47m16s"

// deliver shows a new raw token: printed with --print-raw-token, else
// copied to the clipboard when one is available, else printed.
func (a *app) deliverToken(raw string, f *lifetimeFlags) {
	if f.printRaw {
		fmt.Fprintln(a.out, raw)
		return
	}
	if copyToClipboard(raw) {
		fmt.Fprintln(a.out, "The token was copied to the clipboard (use --print-raw-token to print it).")
		return
	}
	fmt.Fprintln(a.out, raw)
}

func copyToClipboard(s string) bool {
	for _, c := range [][]string{{"wl-copy"}, {"xclip", "-selection", "clipboard"}, {"pbcopy"}} {
		if _, err := exec.LookPath(c[0]); err != nil {
			continue
		}
		if os.Getenv("DISPLAY") == "" && os.Getenv("WAYLAND_DISPLAY") == "" && c[0] != "pbcopy" {
			continue
		}
		cmd := exec.Command(c[0], c[1:]...)
		cmd.Stdin = strings.NewReader(s)
		if cmd.Run() == nil {
			return true
		}
	}
	return false
}

func newTokenIssueCmd(a *app) *cobra.Command {
	var lf lifetimeFlags
	var bearers, perform, publish, subscribe string
	var reusable, asJSON bool
	cmd := &cobra.Command{
		Use:   "issue",
		Short: "Issue a capability token (also a join ticket carrying this instance's addresses)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var req localapi.IssueRequest
			var err error
			for _, p := range []struct {
				flag, val string
				dst       *[]string
			}{{"bearers", bearers, &req.Bearers}, {"performable", perform, &req.Perform}, {"publishable", publish, &req.Publish}, {"subscribable", subscribe, &req.Subscribe}} {
				if *p.dst, err = auth.ParseList(p.val); err != nil {
					return fmt.Errorf("--%s: %w", p.flag, err)
				}
			}
			if cmd.Flags().Changed("bearers") && len(req.Bearers) == 0 {
				// Given but empty (--bearers "$BEARERS" with BEARERS
				// unset, or '[]'): "no bearer" would be the default, a
				// token for whichever peer uses it first, never "nobody".
				return fmt.Errorf("--bearers %q names no bearer: name who may use the token (vt://<peer-id>, ipv4://<cidr>), or leave --bearers out for a token its first user claims", bearers)
			}
			if !cmd.Flags().Changed("subscribable") {
				req.Subscribe = nil // default: everything
			} else if req.Subscribe == nil {
				// Given but empty (--subscribable "" or an empty variable):
				// nothing, never the default of everything.
				req.Subscribe = []string{}
			}
			nbf, exp, err := lf.durations()
			if err != nil {
				return err
			}
			req.NotBefore, req.ExpiresIn, req.Reusable = localapi.Duration(nbf), localapi.Duration(exp), reusable
			return a.withConn(cmd.Context(), func(c *node.Conn) error {
				t, err := c.IssueToken(cmd.Context(), req)
				if err != nil {
					return err
				}
				for _, b := range req.Bearers {
					if anyAddress(b) {
						fmt.Fprintf(a.err, "warning: bearer %s lets any peer that connects from any address use this token, like --reusable; name the peer with vt://<peer-id>, or a narrower CIDR\n", b)
					}
				}
				if asJSON {
					return printJSON(a.out, t)
				}
				if lf.quiet && lf.printRaw {
					fmt.Fprintln(a.out, t.Token)
					return nil
				}
				if !lf.quiet {
					printToken(a, t)
					if len(t.Addrs) == 0 {
						fmt.Fprintln(a.err, "warning: the token carries no address (start the service first so peers can find this instance with it)")
					}
				}
				a.deliverToken(t.Token, &lf)
				return nil
			})
		},
	}
	lf.add(cmd)
	cmd.Flags().StringVar(&bearers, "bearers", "", `who may use the token: JSON array or comma list of vt://<peer-id|validation-id> and ipv4://<cidr> (default: the first peer to use it)`)
	cmd.Flags().StringVar(&perform, "performable", "", `actions the bearer may perform: JSON array or comma list of subjects/patterns (default: none)`)
	cmd.Flags().StringVar(&publish, "publishable", "", `actions the bearer may publish to (default: none)`)
	cmd.Flags().StringVar(&subscribe, "subscribable", "", `actions the bearer may subscribe to (default: all, ">")`)
	cmd.Flags().BoolVar(&reusable, "reusable", false, "any peer (matching --bearers) may use the token; default without bearers: claimed by its first user")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the issued token record as JSON (includes the raw token)")
	return cmd
}

func printToken(a *app, t localapi.Token) {
	bearers := list(t.Bearers)
	if len(t.Bearers) == 0 {
		switch {
		case t.ClaimedBy != "":
			bearers = "vt://" + t.ClaimedBy + " (claimed on first use)"
		case t.Reusable:
			bearers = "anyone holding it (reusable)"
		default:
			bearers = "the first peer to use it (claim on first use)"
		}
	}
	_ = kv(a.out,
		"Token ID", t.ID,
		"Issuer", t.Issuer,
		"Issued", t.IssuedAt.Local().Format(time.RFC3339),
		"Not before", when(t.NotBefore, "now"),
		"Expires", expires(t.ExpiresAt),
		"Performable", list(t.Perform),
		"Publishable", list(t.Publish),
		"Subscribable", list(t.Subscribe),
		"Bearers", bearers,
		"Reusable", yesNo(t.Reusable),
		"Addresses", list(t.Addrs),
	)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func newTokenListCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the tokens this instance issued",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withConn(cmd.Context(), func(c *node.Conn) error {
				ts, err := c.Tokens(cmd.Context())
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(a.out, ts)
				}
				if len(ts) == 0 {
					fmt.Fprintln(a.out, "No tokens issued.")
					return nil
				}
				rows := [][]string{}
				for _, t := range ts {
					b := list(t.Bearers)
					switch {
					case t.ClaimedBy != "":
						b = "claimed by " + t.ClaimedBy
					case t.Reusable && len(t.Bearers) == 0:
						b = "anyone (reusable)"
					case t.Reusable:
						b += " (reusable)"
					}
					rows = append(rows, []string{t.ID, t.IssuedAt.Local().Format(time.RFC3339), expires(t.ExpiresAt), list(t.Perform), list(t.Publish), list(t.Subscribe), b})
				}
				return table(a.out, []string{"ID", "ISSUED", "EXPIRES", "PERFORM", "PUBLISH", "SUBSCRIBE", "BEARERS"}, rows)
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newTokenShowCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "show <id>",
		Short: "Show an issued token",
		Args:  oneID("token id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withConn(cmd.Context(), func(c *node.Conn) error {
				t, err := c.Token(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(a.out, t)
				}
				printToken(a, t)
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newTokenRevokeCmd(a *app) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "revoke <id>",
		Short: "Revoke an issued token: it stops working at once, open sessions included",
		Args:  oneID("token id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !force && isTerminal(os.Stdin) {
				// The question goes to stderr: stdout carries results only.
				fmt.Fprintf(a.err, "Revoke token %s? Peers using it lose access at once. [y/N] ", args[0])
				ans, _ := bufio.NewReader(a.in).ReadString('\n')
				if a := strings.ToLower(strings.TrimSpace(ans)); a != "y" && a != "yes" {
					return exitError{code: 1, msg: "revocation cancelled"}
				}
			}
			return a.withConn(cmd.Context(), func(c *node.Conn) error {
				res, err := c.RevokeTokenResult(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				// The id as the service spells it (canonical), whichever
				// spelling was typed (upper case, braces, urn:uuid:).
				id := res.ID
				if id == "" {
					id = args[0] // a service of an older release
				}
				fmt.Fprintf(a.out, "Revoked token %s\n", safeText(id))
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "do not ask for confirmation")
	return cmd
}

func newTokenPruneCmd(a *app) *cobra.Command {
	var asJSON, dryRun bool
	var expiredFor string
	cmd := &cobra.Command{
		Use:   "prune",
		Short: "Delete the records of expired tokens, so token list shows the live ones",
		Long: `Delete the records of the tokens that expired (more than --expired-for ago), and
list them. An expired token is refused whether or not its record is kept, and a
pruned one stays refused; but pruning is final: were this machine's clock set
too far ahead, a token that only looked expired is revoked by it. A token a
subscription held here still names is kept until that subscription ends.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := parseDurationFlag("expired-for", expiredFor)
			if err != nil {
				return err
			}
			return a.withConn(cmd.Context(), func(c *node.Conn) error {
				res, err := c.PruneTokens(cmd.Context(), localapi.PruneTokensRequest{ExpiredFor: localapi.Duration(d), DryRun: dryRun})
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(a.out, res)
				}
				verb := "Pruned"
				if dryRun {
					verb = "Would prune"
				}
				for _, t := range res.Pruned {
					fmt.Fprintf(a.out, "%s token %s (expired %s)\n", verb, t.ID, t.ExpiresAt.Local().Format(time.RFC3339))
				}
				if len(res.Pruned) == 0 {
					fmt.Fprintln(a.out, "No expired tokens to prune.")
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&expiredFor, "expired-for", "", "only tokens expired at least this long (30s, 10m, 2h, 1d, 1w, 1y, \"2 days\"; default: every expired token)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "list what would be pruned, delete nothing")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// isTerminal reports whether f is a terminal: a character device that
// answers the terminal ioctl (/dev/null is a character device too, and a
// revoke from cron or `ssh -n` must not read its EOF as "no").
func isTerminal(f *os.File) bool {
	return term.IsTerminal(int(f.Fd()))
}

func newTokenIssuerCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "issuer",
		Short: "Print this instance's peer id (the issuer of its tokens)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := a.layout()
			if err != nil {
				return err
			}
			id, err := node.PeerIDOf(l)
			if err != nil {
				return err
			}
			fmt.Fprintln(a.out, id)
			return nil
		},
	}
}

func newTokenDecodeCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "decode <token>",
		Short: "Show a token's claims after checking its signature against its issuer's id",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := auth.Decode(strings.TrimSpace(args[0]))
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(a.out, c)
			}
			var nbf, exp *time.Time
			if c.NotBefore != nil {
				nbf = &c.NotBefore.Time
			}
			if c.ExpiresAt != nil {
				exp = &c.ExpiresAt.Time
			}
			iat := "-"
			if c.IssuedAt != nil {
				iat = c.IssuedAt.Local().Format(time.RFC3339)
			}
			return kv(a.out,
				"Type", c.Type,
				"Token ID", c.ID,
				"Issuer", c.Issuer,
				"Issued", iat,
				"Not before", when(nbf, "-"),
				"Expires", expires(exp),
				"Performable", list(c.Perform),
				"Publishable", list(c.Publish),
				"Subscribable", list(c.Subscribe),
				"Bearers", list(c.Bearers),
				"Reusable", yesNo(c.Reusable),
				"Addresses", list(c.Addrs),
			)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the claims as JSON")
	return cmd
}

// anyAddress reports whether bearer is an ipv4:// CIDR that every address
// matches (/0): a token any directly connected peer may use.
func anyAddress(bearer string) bool {
	cidr, ok := strings.CutPrefix(bearer, auth.SchemeIPv4)
	if !ok {
		return false
	}
	p, err := netip.ParsePrefix(cidr)
	return err == nil && p.Bits() == 0
}
