//go:build !linux

package policy

import "unsafe"

func adviseHuge(unsafe.Pointer, uintptr) {}
