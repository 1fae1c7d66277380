package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/coattail/coattail/node"
	"github.com/coattail/coattail/node/localapi"
	"github.com/spf13/cobra"
)

func newValidationCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "validation", Short: "Issue and manage validation tokens (proofs of a peer id)"}
	var lf lifetimeFlags
	issue := &cobra.Command{
		Use:   "issue",
		Short: "Issue a self-signed validation token proving this instance's peer id",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			nbf, exp, err := lf.durations()
			if err != nil {
				return err
			}
			return a.withConn(cmd.Context(), func(c *node.Conn) error {
				r, err := c.IssueValidation(cmd.Context(), localapi.ValidationIssueRequest{NotBefore: localapi.Duration(nbf), ExpiresIn: localapi.Duration(exp)})
				if err != nil {
					return err
				}
				if !lf.quiet || !lf.printRaw {
					fmt.Fprintf(a.out, "Validation token for peer %s (give it to an issuer: coattail validation add <token>)\n", r.PeerID)
				}
				a.deliverToken(r.Token, &lf)
				return nil
			})
		},
	}
	lf.add(issue)
	add := &cobra.Command{
		Use:   "add <token>",
		Short: "Import another instance's validation token; prints its id for --bearers vt://<id>",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withConn(cmd.Context(), func(c *node.Conn) error {
				v, err := c.AddValidation(cmd.Context(), strings.TrimSpace(args[0]))
				if err != nil {
					return err
				}
				fmt.Fprintf(a.out, "%s\n", v.ID)
				fmt.Fprintf(a.err, "Added validation for peer %s; issue a bound token with: coattail token issue --bearers vt://%s\n", v.PeerID, v.ID)
				return nil
			})
		},
	}
	var listJSON, showJSON bool
	ls := &cobra.Command{
		Use:   "list",
		Short: "List imported validation tokens",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withConn(cmd.Context(), func(c *node.Conn) error {
				vs, err := c.Validations(cmd.Context())
				if err != nil {
					return err
				}
				if listJSON {
					return printJSON(a.out, vs)
				}
				if len(vs) == 0 {
					fmt.Fprintln(a.out, "No validation tokens.")
					return nil
				}
				rows := [][]string{}
				for _, v := range vs {
					rows = append(rows, []string{v.ID, v.PeerID, v.AddedAt.Local().Format(time.RFC3339), expires(v.ExpiresAt)})
				}
				return table(a.out, []string{"ID", "PEER ID", "ADDED", "EXPIRES"}, rows)
			})
		},
	}
	ls.Flags().BoolVar(&listJSON, "json", false, "print JSON")
	show := &cobra.Command{
		Use:   "show <id>",
		Short: "Show an imported validation token",
		Args:  oneID("validation id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withConn(cmd.Context(), func(c *node.Conn) error {
				v, err := c.Validation(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				if showJSON {
					return printJSON(a.out, v)
				}
				return kv(a.out, "ID", v.ID, "Peer ID", v.PeerID, "Added", v.AddedAt.Local().Format(time.RFC3339), "Expires", expires(v.ExpiresAt))
			})
		},
	}
	show.Flags().BoolVar(&showJSON, "json", false, "print JSON")
	rm := &cobra.Command{
		Use:   "remove <id>",
		Short: "Remove an imported validation token",
		Args:  oneID("validation id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withConn(cmd.Context(), func(c *node.Conn) error {
				if err := c.RemoveValidation(cmd.Context(), args[0]); err != nil {
					return err
				}
				fmt.Fprintf(a.out, "Removed validation %s\n", args[0])
				return nil
			})
		},
	}
	cmd.AddCommand(issue, add, ls, show, rm)
	return cmd
}

func newPeerCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "peer", Short: "Add, list, show and remove peers"}
	var token string
	var force bool
	add := &cobra.Command{
		Use:   "add --token TOKEN [--force]",
		Short: "Add the issuer of a token as a peer (dials the addresses the token carries), or replace its token",
		Long: `Add the issuer of a token as a peer: the token is verified with the peer,
which it names, at the addresses it carries. Adding a token of a peer already
added replaces the token held for it. A replacement that does not allow a
subscription held at the peer is refused (the peer would remove that
subscription at its next reconnect); --force ends such subscriptions now, at
both ends, and replaces the token.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withConn(cmd.Context(), func(c *node.Conn) error {
				p, err := c.AddPeerRequest(cmd.Context(), localapi.AddPeerRequest{Token: strings.TrimSpace(token), Force: force})
				if err != nil {
					return err
				}
				fmt.Fprintln(a.out, p.ID)
				return nil
			})
		},
	}
	add.Flags().StringVar(&token, "token", "", "capability token issued to you by the peer")
	add.Flags().BoolVar(&force, "force", false, "replace the peer's token even if it does not allow subscriptions held there (they are ended)")
	_ = add.MarkFlagRequired("token")

	var listJSON bool
	ls := &cobra.Command{
		Use:   "list",
		Short: "List peers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withConn(cmd.Context(), func(c *node.Conn) error {
				ps, err := c.Peers(cmd.Context())
				if err != nil {
					return err
				}
				if listJSON {
					out := make([]peerOutJSON, len(ps))
					for k, p := range ps {
						out[k] = newPeerOutJSON(p, c.Online)
					}
					return printJSON(a.out, out)
				}
				if len(ps) == 0 {
					fmt.Fprintln(a.out, "No peers. Add one with: coattail peer add --token <token>")
					return nil
				}
				rows := [][]string{}
				for _, p := range ps {
					conn := "no"
					if !c.Online {
						conn = "unknown"
					} else if p.Connected {
						conn = p.Connection
					}
					rows = append(rows, []string{p.ID, conn, list(p.Perform), list(p.Publish), list(p.Subscribe), peerExpires(p.ExpiresAt, p.RevokedAt)})
				}
				return table(a.out, []string{"PEER ID", "CONNECTED", "PERFORM", "PUBLISH", "SUBSCRIBE", "EXPIRES"}, rows)
			})
		},
	}
	ls.Flags().BoolVar(&listJSON, "json", false, "print JSON")

	var showID string
	var showJSON bool
	show := &cobra.Command{
		Use:   "show --id PEER",
		Short: "Show what a peer lets you do and how you reach it (direct or relayed, round-trip time)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := notEmpty(cmd, "id"); err != nil {
				return err
			}
			return a.withConn(cmd.Context(), func(c *node.Conn) error {
				p, err := c.Peer(cmd.Context(), showID)
				if err != nil {
					return err
				}
				if showJSON {
					return printJSON(a.out, newPeerOutJSON(p, c.Online))
				}
				conn := "not connected"
				if !c.Online {
					conn = "unknown (service not running)"
				} else if p.Connected {
					conn = p.Connection
					if p.RTT > 0 {
						conn += fmt.Sprintf(", rtt %v", time.Duration(p.RTT).Round(10*time.Microsecond))
					}
				}
				pairs := []string{
					"Peer ID", p.ID,
					"Token ID", p.TokenID,
					"Added", p.AddedAt.Local().Format(time.RFC3339),
					"Expires", peerExpires(p.ExpiresAt, p.RevokedAt),
				}
				if p.RevokedAt != nil {
					pairs = append(pairs, "Revoked", when(p.RevokedAt, "")+" by the peer; ask it for a new token and run: coattail peer add --token <token>")
				}
				return kv(a.out, append(pairs,
					"Performable", list(p.Perform),
					"Publishable", list(p.Publish),
					"Subscribable", list(p.Subscribe),
					"Addresses", list(p.Addrs),
					"Connection", conn,
					"Remote addrs", list(p.RemoteAddrs),
				)...)
			})
		},
	}
	show.Flags().StringVar(&showID, "id", "", "peer id")
	show.Flags().BoolVar(&showJSON, "json", false, "print JSON")
	_ = show.MarkFlagRequired("id")

	var rmID string
	rm := &cobra.Command{
		Use:   "remove --id PEER",
		Short: "Forget a peer",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := notEmpty(cmd, "id"); err != nil {
				return err
			}
			return a.withConn(cmd.Context(), func(c *node.Conn) error {
				res, err := c.RemovePeer(cmd.Context(), rmID)
				if err != nil {
					return err
				}
				// The id as the service spells it (base58), whichever
				// spelling --id gave.
				id := res.ID
				if id == "" {
					id = rmID // a service of an older release
				}
				fmt.Fprintf(a.out, "Removed peer %s\n", id)
				if len(res.Untold) > 0 {
					fmt.Fprintf(a.err, "The peer could not be told that %d subscription(s) held there ended (%s); it removes them when it next reaches this instance.\n",
						len(res.Untold), safeText(strings.Join(res.Untold, ", ")))
				}
				return nil
			})
		},
	}
	rm.Flags().StringVar(&rmID, "id", "", "peer id")
	_ = rm.MarkFlagRequired("id")
	cmd.AddCommand(add, ls, show, rm)
	return cmd
}

// peerOutJSON is a peer as peer list and peer show print it with --json:
// connected is null while the service is not running, which alone knows
// (the text says unknown); it said false, as if the peer were known to be
// unreachable.
type peerOutJSON struct {
	localapi.Peer
	Connected *bool `json:"connected"`
}

func newPeerOutJSON(p localapi.Peer, online bool) peerOutJSON {
	out := peerOutJSON{Peer: p}
	if online {
		out.Connected = &p.Connected
	}
	return out
}
