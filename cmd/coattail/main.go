// Command coattail is the Coattail CLI: thin cobra commands over package
// node. Commands that act on an instance talk to its running service
// through the local control API, or to an offline in-process node when the
// service is stopped (node.Connect decides). Only this package prints.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/coattail/coattail/node"
	"github.com/spf13/cobra"
)

func main() {
	if code, ran := runAsInit(); ran {
		os.Exit(code)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	cancel()
	os.Exit(code)
}

// app holds what every command shares.
type app struct {
	in       io.Reader
	out, err io.Writer
	instance string // --instance
}

// run executes the CLI and returns the process exit code.
func run(ctx context.Context, args []string, in io.Reader, out, errw io.Writer) int {
	a := &app{in: in, out: out, err: errw}
	root := newRootCmd(a)
	root.SetArgs(args)
	root.SetIn(in)
	root.SetOut(out)
	root.SetErr(errw)
	if err := root.ExecuteContext(ctx); err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			if ee.msg != "" {
				fmt.Fprintln(errw, "coattail:", ee.msg)
			}
			return ee.code
		}
		fmt.Fprintln(errw, "coattail:", humanError(err))
		return 1
	}
	return 0
}

// exitError ends the program with a specific code.
type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return e.msg }

func newRootCmd(a *app) *cobra.Command {
	root := &cobra.Command{
		Use:           "coattail",
		Short:         "Peer-to-peer remote execution and publication",
		Long:          "Coattail runs actions, publishes their results to subscribed peers, and lets peers perform actions remotely, all over libp2p with capability tokens.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	// An offline command records what it is beside the instance's data
	// lock, so that a process that finds the data in use can say.
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		node.SetCommand(cmd.CommandPath())
		// `--instance "$DIR"` with DIR unset would act on the instance of
		// the current directory (service stop, token revoke, ...).
		if f := cmd.Flags().Lookup("instance"); f != nil && f.Changed && strings.TrimSpace(a.instance) == "" {
			return errors.New("--instance must not be empty (without it, the instance is $COATTAIL_INSTANCE, else the current directory or its nearest parent holding one)")
		}
		return nil
	}
	root.PersistentFlags().StringVar(&a.instance, "instance", "", "instance directory (default: $COATTAIL_INSTANCE, else the current directory or its nearest parent holding an instance)")
	root.AddCommand(
		newVersionCmd(a),
		newNewCmd(a),
		newServiceCmd(a),
		newConfigCmd(a),
		newActionCmd(a),
		newTokenCmd(a),
		newValidationCmd(a),
		newPeerCmd(a),
		newSubscriptionsCmd(a),
		newSubscribersCmd(a),
		newDeadLettersCmd(a),
		newLabCmd(a),
		newBenchCmd(a),
	)
	// cobra adds help and completion when it executes; added now, they get
	// the same checks as the other commands (and completion keeps the
	// writer it is created with).
	root.SetOut(a.out)
	root.SetErr(a.err)
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.Name() == "help" {
			c.Run, c.RunE = nil, helpTopic
		}
	}
	rejectUnknownSubcommands(root)
	root.SetFlagErrorFunc(originalFlagHint)
	return root
}

// originalFlagHint adds to a flag error for a flag of the original
// Coattail that has no counterpart here by its name what does its work.
// (Its README has token commands take --config <file>.)
func originalFlagHint(_ *cobra.Command, err error) error {
	if err.Error() == "unknown flag: --config" {
		return fmt.Errorf("%w (the original Coattail's --config FILE: here each instance reads the config.yml in its own directory; choose the instance with --instance DIR)", err)
	}
	return err
}

// helpTopic is `coattail help [command]`. cobra's own printed "Unknown help
// topic" and the usage on stdout and exited 0, which hides a typo from
// scripts.
func helpTopic(c *cobra.Command, args []string) error {
	cmd, rest, err := c.Root().Find(args)
	if err != nil || cmd == nil || len(rest) > 0 {
		return fmt.Errorf("unknown help topic %q (see: %s --help)", strings.Join(args, " "), c.Root().Name())
	}
	return cmd.Help()
}

func newVersionCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the Coattail version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(a.out, "coattail %s\n", node.Version)
			return nil
		},
	}
}

// layout finds the instance the command acts on.
func (a *app) layout() (node.Layout, error) { return node.FindInstance(a.instance) }

// connect opens the instance's control API (service or offline node).
func (a *app) connect(ctx context.Context) (*node.Conn, error) {
	l, err := a.layout()
	if err != nil {
		return nil, err
	}
	return node.Connect(ctx, l)
}

// withConn runs fn with a connection and closes it afterwards.
func (a *app) withConn(ctx context.Context, fn func(c *node.Conn) error) error {
	c, err := a.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	return fn(c)
}

// rejectUnknownSubcommands makes every command group below c (token,
// peer, ...) fail on a mistyped subcommand: cobra would print the group's
// help and exit 0, which hides the typo from scripts.
func rejectUnknownSubcommands(c *cobra.Command) {
	for _, sub := range c.Commands() {
		if sub.HasSubCommands() && sub.Run == nil && sub.RunE == nil {
			sub.RunE = func(cmd *cobra.Command, args []string) error {
				if len(args) > 0 {
					return fmt.Errorf("unknown command %q for %q (see: %s --help)", args[0], cmd.CommandPath(), cmd.CommandPath())
				}
				return cmd.Help()
			}
		}
		rejectUnknownSubcommands(sub)
	}
}

// oneID is the Args of a command that takes one id (what names it in the
// error): exactly one argument, and not an empty one, which would reach
// the control API as a path without an id.
func oneID(what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := cobra.ExactArgs(1)(cmd, args); err != nil {
			return err
		}
		if strings.TrimSpace(args[0]) == "" {
			return fmt.Errorf("the %s must not be empty (see: %s --help)", what, cmd.CommandPath())
		}
		return nil
	}
}

// notEmpty fails when one of the named flags was given an empty value (or,
// for a list, an empty item), as `--peer "$PEER"` with PEER unset gives:
// for these flags an empty value would silently mean "not given" (perform
// here instead of on the peer, notify every subscriber, ...).
func notEmpty(cmd *cobra.Command, names ...string) error {
	for _, name := range names {
		f := cmd.Flags().Lookup(name)
		if f == nil || !f.Changed {
			continue
		}
		var items []string
		if sv, ok := f.Value.(interface{ GetSlice() []string }); ok {
			items = sv.GetSlice()
			if len(items) == 0 {
				items = []string{""}
			}
		} else {
			items = []string{f.Value.String()}
		}
		for _, s := range items {
			if strings.TrimSpace(s) == "" {
				return fmt.Errorf("--%s must not be empty", name)
			}
		}
	}
	return nil
}
