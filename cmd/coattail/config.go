package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/coattail/coattail/node"
	"github.com/spf13/cobra"
)

func newConfigCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Check the instance's config file"}
	check := &cobra.Command{
		Use:   "check",
		Short: "Check config.yml without starting the service",
		Long: `Check the instance's config.yml as the service would read it at start, without
starting it (as nats-server -t does): every mistake is named with its key
and line, and the exit code is 1; what is valid but worth knowing (a setting
that does not work everywhere) is a warning on stderr. With the service running, it also says
whether the file changed after the service started: the service reads its
config only at start, so a change takes effect at the next start.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := a.layout()
			if err != nil {
				return err
			}
			cfg, err := node.LoadConfig(l.Config())
			if err != nil {
				return err
			}
			fmt.Fprintf(a.out, "%s is valid\n", l.Config())
			for _, w := range cfg.Warnings() {
				fmt.Fprintf(a.err, "warning: %s\n", w)
			}
			if node.ConfigSetsNothing(l.Config()) {
				fmt.Fprintf(a.err, "warning: %s\n", node.EmptyConfigWarning(l))
			}
			st, err := node.Running(l)
			switch {
			case errors.Is(err, node.ErrNotRunning):
				return nil
			case err != nil:
				return err
			}
			fi, err := os.Stat(l.Config())
			if err != nil {
				return err
			}
			if fi.ModTime().After(st.StartedAt) {
				fmt.Fprintf(a.err, "The running service (pid %d) started before %s last changed; the change takes effect when it starts again: coattail service restart\n",
					st.PID, l.Config())
			}
			return nil
		},
	}
	cmd.AddCommand(check)
	return cmd
}
