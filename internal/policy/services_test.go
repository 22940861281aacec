package policy

import (
	"reflect"
	"testing"
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
