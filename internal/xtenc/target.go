package xtenc

import (
	"encoding/binary"

	"golang.org/x/sys/unix"
)

// The reject types of libipt_REJECT and libip6t_REJECT (their full names).
var (
	reject4 = map[string]uint32{"icmp-net-unreachable": 0, "icmp-host-unreachable": 1, "icmp-proto-unreachable": 2, "icmp-port-unreachable": 3,
		"icmp-net-prohibited": 5, "icmp-host-prohibited": 6, "tcp-reset": 7, "icmp-admin-prohibited": 8}
	reject6 = map[string]uint32{"icmp6-no-route": 0, "icmp6-adm-prohibited": 1, "icmp6-addr-unreachable": 3, "icmp6-port-unreachable": 4,
		"tcp-reset": 6, "icmp6-policy-fail": 7, "icmp6-reject-route": 8}
)

// targetState collects a compat target's options.
type targetState struct {
	seen      opts
	reject    string
	logPrefix string
	logLevel  string
	setName   string
	setDirs   string
	timeout   string
	exist     bool
}

var logLevels = map[string]byte{"emerg": 0, "alert": 1, "crit": 2, "error": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7}

func (r *rule) targetOption(opt string, val func() (string, error)) error {
	ts := r.ts()
	if ts.seen.has(opt) {
		return unsupported("%s twice", opt)
	}
	ts.seen = append(ts.seen, opt)
	if opt == "--exist" && r.target.xtName == "SET" {
		ts.exist = true
		return nil
	}
	v, err := val()
	if err != nil {
		return err
	}
	switch {
	case r.target.xtName == "REJECT" && opt == "--reject-with":
		ts.reject = v
	case r.target.xtName == "LOG" && opt == "--log-prefix":
		ts.logPrefix = v
	case r.target.xtName == "LOG" && opt == "--log-level":
		ts.logLevel = v
	case r.target.xtName == "SET" && opt == "--add-set":
		if len(v) > maxSetName || !validName(v) {
			return unsupported("set name %q", v)
		}
		dirs, err := val()
		if err != nil {
			return err
		}
		ts.setName, ts.setDirs = v, dirs
	case r.target.xtName == "SET" && opt == "--timeout":
		ts.timeout = v
	default:
		return unsupported("target option %s", opt)
	}
	return nil
}

func (r *rule) ts() *targetState {
	if r.tstate == nil {
		r.tstate = &targetState{}
	}
	return r.tstate
}

func (r *rule) finishTarget(sets SetIndex) error {
	ts := r.ts()
	ne := binary.NativeEndian
	switch r.target.xtName {
	case "":
		if len(ts.seen) > 0 {
			return unsupported("options after a verdict")
		}
	case "REJECT":
		table, with := reject4, uint32(3)
		if r.fam == unix.NFPROTO_IPV6 {
			table, with = reject6, 4
		}
		if ts.seen.has("--reject-with") {
			w, ok := table[ts.reject]
			if !ok {
				return unsupported("reject type %q", ts.reject)
			}
			with = w
		}
		if ts.reject == "tcp-reset" && r.l4Name != "tcp" {
			return unsupported("tcp-reset without -p tcp")
		}
		r.target.info = xtAlign(ne.AppendUint32(nil, with))
	case "LOG":
		if !ts.seen.has("--log-prefix") || ts.logPrefix == "" || len(ts.logPrefix) > maxLogPrefix {
			return unsupported("log prefix of %d bytes", len(ts.logPrefix))
		}
		if err := checkText(ts.logPrefix); err != nil {
			return err
		}
		level := byte(4)
		if ts.seen.has("--log-level") {
			l, ok := logLevels[ts.logLevel]
			if n, isNum := parseUint(ts.logLevel, 8); isNum && n <= 7 {
				l, ok = byte(n), true
			}
			if !ok {
				return unsupported("log level %q", ts.logLevel)
			}
			level = l
		}
		info := make([]byte, 32)
		info[0] = level
		copy(info[2:], ts.logPrefix)
		r.target.info = info
	case "SET":
		if !ts.seen.has("--add-set") {
			return unsupported("SET without --add-set")
		}
		if ts.setDirs != "src" && ts.setDirs != "dst" && ts.setDirs != "src,dst" {
			return unsupported("set directions %q", ts.setDirs)
		}
		if sets == nil {
			return unsupported("a set and no SetIndex")
		}
		idx, err := sets(ts.setName, r.fam)
		if err != nil {
			return err
		}
		timeout := uint32(0xffffffff)
		if ts.seen.has("--timeout") {
			n, ok := parseUint(ts.timeout, 32)
			if !ok || n == 0xffffffff {
				return unsupported("timeout %q", ts.timeout)
			}
			timeout = uint32(n)
		}
		info := make([]byte, 24)
		ne.PutUint16(info[0:], idx)
		dim, flags := setDirs(ts.setDirs)
		info[2], info[3] = dim, flags
		ne.PutUint16(info[4:], 0xffff) // del_set: none
		ne.PutUint16(info[8:], 0xffff) // map_set: none
		if ts.exist {
			ne.PutUint32(info[12:], 1) // IPSET_FLAG_EXIST
		}
		ne.PutUint32(info[16:], timeout)
		r.target.info = info
	}
	return nil
}

// checkText: printable UTF-8, no quote or backslash (iptables-save would
// escape them).
func checkText(s string) error {
	for _, ch := range s {
		if ch < 0x20 || ch == 0x7f || (ch >= 0x80 && ch < 0xa0) || ch == '"' || ch == '\\' || ch == 0xfffd {
			return unsupported("text with %U", ch)
		}
	}
	return nil
}
