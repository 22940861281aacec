// Package packaging ships the files moat installs on a host.
package packaging

import _ "embed"

// MoatService is the systemd unit that loads the saved ruleset at boot.
//
//go:embed systemd/moat.service
var MoatService string

// GuardService is the systemd unit that runs 'moat guard'.
//
//go:embed systemd/moat-guard.service
var GuardService string

// UnitExecPath is the moat path written in MoatService, replaced by the
// real one when the unit is installed.
const UnitExecPath = "/usr/sbin/moat"

// BlocklistService and BlocklistTimer fetch the policy's url blocklists.
//
//go:embed systemd/moat-blocklist.service
var BlocklistService string

//go:embed systemd/moat-blocklist.timer
var BlocklistTimer string
