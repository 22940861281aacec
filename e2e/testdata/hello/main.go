// Command hello is the smallest Go program that writes a line: the start
// and exit of a Go process (BenchmarkFixedCostFloor).
package main

import "os"

func main() { _, _ = os.Stdout.WriteString("hello\n") }
