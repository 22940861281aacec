module github.com/moat-fw/moat

go 1.26.8
