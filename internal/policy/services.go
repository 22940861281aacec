package policy

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Service is a named port from /etc/services with the protocols it is
// registered for.
type Service struct {
	Port   uint16
	Protos []string // "tcp", "udp" (others are ignored)
}

// Services maps service names and aliases to ports.
type Services map[string]Service

// ServicesFile is where service names are read from.
const ServicesFile = "/etc/services"

var (
	systemOnce     sync.Once
	systemServices Services
	systemErr      error
)

// SystemServices reads /etc/services once.
func SystemServices() (Services, error) {
	systemOnce.Do(func() {
		data, err := os.ReadFile(ServicesFile)
		if err != nil {
			systemErr = fmt.Errorf("read service names: %w", err)
			return
		}
		systemServices = ParseServices(data)
	})
	return systemServices, systemErr
}

// ParseServices reads the services(5) format: "name port/proto aliases...".
// Malformed lines are skipped, as libc does. Every command reads
// /etc/services: the names are substrings of one copy of data, and the
// protocol lists shared (read-only, full: an append copies).
func ParseServices(data []byte) Services {
	text := string(data)
	// Sized by the lines of a usual file (Debian's 361, Fedora's whole
	// IANA list about 11,000), never by a count a file of empty lines
	// can make huge.
	s := make(Services, min(strings.Count(text, "\n"), maxServicesHint))
	var f []string
	for len(text) > 0 {
		var line string
		line, text, _ = strings.Cut(text, "\n")
		line = strings.TrimSuffix(line, "\r")
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		f = f[:0]
		for w := range strings.FieldsSeq(line) {
			f = append(f, w)
		}
		if len(f) < 2 {
			continue
		}
		portStr, proto, ok := strings.Cut(f[1], "/")
		if !ok || (proto != "tcp" && proto != "udp") {
			continue
		}
		port, err := strconv.ParseUint(portStr, 10, 16)
		if err != nil || port == 0 {
			continue
		}
		f[1] = f[0] // the names: the first and the aliases
		for _, name := range f[1:] {
			svc := s[name]
			if len(svc.Protos) > 0 && svc.Port != uint16(port) {
				continue // first definition wins, as in getservbyname
			}
			svc.Port = uint16(port)
			svc.Protos = withProto(svc.Protos, proto)
			s[name] = svc
		}
	}
	return s
}

// maxServicesHint is the most services ParseServices makes room for
// before it reads them.
const maxServicesHint = 1 << 14

// The protocol lists a service can have, in the order they were found.
var (
	protosTCP    = []string{"tcp"}
	protosUDP    = []string{"udp"}
	protosTCPUDP = []string{"tcp", "udp"}
	protosUDPTCP = []string{"udp", "tcp"}
)

// withProto is protos with proto added last (if not in it already).
func withProto(protos []string, proto string) []string {
	switch {
	case len(protos) == 0 && proto == "tcp":
		return protosTCP
	case len(protos) == 0:
		return protosUDP
	case slices.Contains(protos, proto):
		return protos
	case len(protos) == 1 && protos[0] == "tcp":
		return protosTCPUDP
	case len(protos) == 1:
		return protosUDPTCP
	}
	return append(protos[:len(protos):len(protos)], proto)
}
