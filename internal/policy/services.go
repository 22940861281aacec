package policy

import (
	"bufio"
	"bytes"
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
// Malformed lines are skipped, as libc does.
func ParseServices(data []byte) Services {
	s := Services{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	var f []string // reused: /etc/services is read by every command
	for sc.Scan() {
		line := sc.Text()
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
			if !slices.Contains(svc.Protos, proto) {
				svc.Protos = append(svc.Protos, proto)
			}
			s[name] = svc
		}
	}
	return s
}
