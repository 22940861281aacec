package cli

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// Set at build time by scripts/package.sh:
//
//	-ldflags "-X github.com/moat-fw/moat/internal/cli.Version=1.2.3
//	          -X github.com/moat-fw/moat/internal/cli.Commit=abc123
//	          -X github.com/moat-fw/moat/internal/cli.BuildDate=2026-01-02T03:04:05Z"
//
// Without them, the Go toolchain's build information fills in what it knows
// (the module version of 'go install ...@v1.2.3', the VCS revision and time).
var (
	Commit    = ""
	BuildDate = ""
)

// BuildInfo is what 'moat version' prints.
type BuildInfo struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	BuildDate string `json:"build_date"`
	GoVersion string `json:"go_version"`
	Platform  string `json:"platform"`
}

// readBuildInfo combines the stamped values with the toolchain's.
func readBuildInfo() BuildInfo {
	bi := BuildInfo{Version: Version, Commit: Commit, BuildDate: BuildDate,
		GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if info, ok := debug.ReadBuildInfo(); ok {
		if bi.Version == "dev" && info.Main.Version != "" && info.Main.Version != "(devel)" {
			bi.Version = info.Main.Version
		}
		modified := false
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				if bi.Commit == "" {
					bi.Commit = s.Value
				}
			case "vcs.time":
				if bi.BuildDate == "" {
					bi.BuildDate = s.Value
				}
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		if modified && Commit == "" && bi.Commit != "" {
			bi.Commit += "-dirty"
		}
	}
	if bi.Commit == "" {
		bi.Commit = "unknown"
	}
	if bi.BuildDate == "" {
		bi.BuildDate = "unknown"
	}
	return bi
}

func (bi BuildInfo) String() string {
	return fmt.Sprintf("moat %s\ncommit:     %s\nbuilt:      %s\ngo:         %s %s\n",
		bi.Version, bi.Commit, bi.BuildDate, bi.GoVersion, bi.Platform)
}

func (a *app) versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Short:   "Print moat's version, commit, build date and Go version",
		Example: "  moat version\n  moat version --json",
		GroupID: "inspect",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			bi := readBuildInfo()
			if a.json {
				return a.printJSON(bi)
			}
			a.printf("%s", bi)
			return nil
		},
	}
}
