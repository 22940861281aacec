package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
)

// Services are listeners running in a namespace.
type Services struct {
	mu      sync.Mutex
	closers []func() error
	wg      sync.WaitGroup
}

// Close stops every listener and waits for their goroutines.
func (s *Services) Close() error {
	s.mu.Lock()
	closers := s.closers
	s.closers = nil
	s.mu.Unlock()
	var errs []error
	for _, c := range closers {
		if err := c(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	s.wg.Wait()
	return errors.Join(errs...)
}

// ServeTCP listens on every address of the namespace (both families) on
// port, and answers each connection with a short banner.
func (s *Services) ServeTCP(ns *NS, port uint16) error {
	return s.serveTCP(ns, port, func(c net.Conn) {
		_, _ = c.Write([]byte("moat lab\n")) // a client that left early is no fault
	})
}

// serveTCP accepts connections on port (both families) and runs handle
// on each in its own goroutine, then closes it.
func (s *Services) serveTCP(ns *NS, port uint16, handle func(net.Conn)) error {
	var l net.Listener
	err := ns.Do(func() error {
		var err error
		l, err = net.Listen("tcp", fmt.Sprintf("[::]:%d", port))
		return err
	})
	if err != nil {
		return fmt.Errorf("listen tcp/%d in %s: %w", port, ns.Name, err)
	}
	s.add(l.Close)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.add(c.Close)
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer func() { _ = c.Close() }() // Close also runs from Services.Close
				handle(c)
			}()
		}
	}()
	return nil
}

// ServeUDP answers every datagram on port (both families) with an echo.
func (s *Services) ServeUDP(ns *NS, port uint16) error {
	var pc net.PacketConn
	err := ns.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", fmt.Sprintf("[::]:%d", port))
		return err
	})
	if err != nil {
		return fmt.Errorf("listen udp/%d in %s: %w", port, ns.Name, err)
	}
	s.add(pc.Close)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from) // a lost echo is what a probe may see
		}
	}()
	return nil
}

func (s *Services) add(c func() error) {
	s.mu.Lock()
	s.closers = append(s.closers, c)
	s.mu.Unlock()
}

// ServeAll starts TCP and UDP listeners on each port.
func (s *Services) ServeAll(ctx context.Context, ns *NS, tcp, udp []uint16) error {
	for _, p := range tcp {
		if err := s.ServeTCP(ns, p); err != nil {
			return err
		}
	}
	for _, p := range udp {
		if err := s.ServeUDP(ns, p); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// ServeEcho listens on port (both families) and echoes what each
// connection sends until it closes: a long-lived flow for tests.
func (s *Services) ServeEcho(ns *NS, port uint16) error {
	return s.serveTCP(ns, port, func(c net.Conn) {
		_, _ = io.Copy(c, c) // ends when the peer closes or resets
	})
}

// Dial opens a TCP connection from inside ns.
func (ns *NS) Dial(ctx context.Context, dst string) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, "tcp", dst)
		return err
	})
	return c, err
}
