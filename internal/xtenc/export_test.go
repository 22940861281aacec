package xtenc

// For the corpus test (package xtenc_test, which imports internal/ipt).
var (
	CompareKernel  = compareKernel
	CompareWire    = compareWire
	SkipWithoutNft = skipWithoutNft
)

// Families are the families the kernel test runs, by ipset family name.
func Families() map[string]FamTools { return map[string]FamTools{"inet": fams[0], "inet6": fams[1]} }

// FamTools is famTools.
type FamTools = famTools
