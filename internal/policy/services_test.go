package policy

import (
	"bufio"
	"bytes"
	"os"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The services(5) format as libc reads it: names and aliases, the first
// definition of a name wins, comments and malformed lines are skipped.
func TestParseServices(t *testing.T) {
	got := ParseServices([]byte("# comment\n" +
		"ssh\t\t22/tcp\t\t\t# SSH Remote Login Protocol\n" +
		"domain\t\t53/tcp\n" +
		"domain\t\t53/udp\n" +
		"http 80/tcp www www-http # WorldWideWeb\n" +
		"alt 8080/tcp http\n" + // a later definition of http: ignored
		"bad 70000/tcp\n" +
		"zero 0/udp\n" +
		"sctp-only 9/sctp\n" +
		"lonely\n" +
		"   \n" +
		"noslash 12\n"))
	want := Services{
		"ssh":      {Port: 22, Protos: []string{"tcp"}},
		"domain":   {Port: 53, Protos: []string{"tcp", "udp"}},
		"http":     {Port: 80, Protos: []string{"tcp"}},
		"www":      {Port: 80, Protos: []string{"tcp"}},
		"www-http": {Port: 80, Protos: []string{"tcp"}},
		"alt":      {Port: 8080, Protos: []string{"tcp"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v\nwant %v", got, want)
	}
}

func BenchmarkParseServices(b *testing.B) {
	var data []byte
	for range 300 {
		data = append(data, "http 80/tcp www www-http # WorldWideWeb HTTP\nhttp 80/udp\n"...)
	}
	b.ReportAllocs()
	for b.Loop() {
		ParseServices(data)
	}
}

// parseServicesScanner is ParseServices as it was until the eighth
// session (a bufio.Scanner, a string per line, a protocol list per
// name): the reference the faster one is held to.
func parseServicesScanner(data []byte) Services {
	s := Services{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	var f []string
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
		f[1] = f[0]
		for _, name := range f[1:] {
			svc := s[name]
			if len(svc.Protos) > 0 && svc.Port != uint16(port) {
				continue
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

// sameServices: equal maps, nil and empty protocol lists apart.
func sameServices(a, b Services) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		w, ok := b[k]
		if !ok || v.Port != w.Port || !slices.Equal(v.Protos, w.Protos) {
			return false
		}
	}
	return true
}

// ParseServices reads what the scanner-based parser read: this host's
// /etc/services, the edge cases of TestParseServices with CRLF line ends,
// and a file without its last newline.
func TestParseServicesAsScanner(t *testing.T) {
	inputs := []string{
		"ssh 22/tcp\r\nssh 22/udp\r\ndomain 53/udp\r\ndomain 53/tcp x\r\n",
		"a 1/tcp b c\nb 2/udp\nc 1/udp\nd 4/tcp", // no final newline
		"\n\n# only comments\n\t#x 1/tcp\n",
		"u\u00a0 7/tcp\nv\u2003w 8/udp\n", // non-ASCII spaces split fields as strings.Fields does
	}
	if data, err := os.ReadFile(ServicesFile); err == nil {
		inputs = append(inputs, string(data))
	}
	for _, in := range inputs {
		if got, want := ParseServices([]byte(in)), parseServicesScanner([]byte(in)); !sameServices(got, want) {
			t.Errorf("%.60q: got %v\nwant %v", in, got, want)
		}
	}
	// The shared protocol lists are never written through: appending to
	// what one name holds leaves the others'.
	s := ParseServices([]byte("a 1/tcp\nb 2/tcp\n"))
	_ = append(s["a"].Protos, "udp")
	if !slices.Equal(s["b"].Protos, []string{"tcp"}) || !slices.Equal(protosTCP, []string{"tcp"}) {
		t.Errorf("a shared protocol list was changed: %v %v", s["b"].Protos, protosTCP)
	}
}

func FuzzParseServicesAsScanner(f *testing.F) {
	f.Add([]byte("ssh 22/tcp\nhttp 80/tcp www\n# c\nhttp 80/udp\r\n"))
	f.Add([]byte("a 1/udp b\nb 1/tcp\na 2/tcp\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > bufio.MaxScanTokenSize {
			return // the scanner stopped at a line that long; libc, and ParseServices, read on
		}
		if got, want := ParseServices(data), parseServicesScanner(data); !sameServices(got, want) {
			t.Errorf("%q: got %v\nwant %v", data, got, want)
		}
	})
}

// BenchmarkParseServicesSystem: this host's /etc/services, read by every
// command, against the scanner-based parser in the same run.
func BenchmarkParseServicesSystem(b *testing.B) {
	data, err := os.ReadFile(ServicesFile)
	if err != nil {
		b.Skip(err)
	}
	var old time.Duration
	b.Run("scanner", func(b *testing.B) {
		b.ReportAllocs()
		start := time.Now()
		for b.Loop() {
			parseServicesScanner(data)
		}
		old = time.Since(start) / time.Duration(b.N)
	})
	b.Run("parse", func(b *testing.B) {
		b.ReportAllocs()
		start := time.Now()
		for b.Loop() {
			ParseServices(data)
		}
		if old > 0 {
			b.ReportMetric(float64(time.Since(start)/time.Duration(b.N))/float64(old), "x-scanner")
		}
	})
}

// A services file of many empty or malformed lines (the file is root's,
// but every input is hostile) costs memory for what it names, not for
// its line count: the map was sized by the count of newlines, and 1 MiB
// of them asked for a map of a million services (about 56 MB; a 64 MB
// file, gigabytes).
func TestParseServicesManyLinesFewNames(t *testing.T) {
	data := bytes.Repeat([]byte("\n"), 1<<20)
	data = append(data, "ssh 22/tcp\n"...)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	s := ParseServices(data)
	runtime.ReadMemStats(&after)
	if len(s) != 1 || s["ssh"].Port != 22 {
		t.Fatalf("got %v", s)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 4<<20 {
		t.Errorf("parsing %d empty lines and one service allocated %d bytes, want under 4 MiB", len(data)-11, alloc)
	}
}
