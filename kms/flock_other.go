//go:build !unix

package kms

import (
	"context"
	"os"
)

// lockFile is a no-op where flock(2) does not exist: only one process may
// manage a keyring at a time there.
func lockFile(ctx context.Context, path string, exclusive bool) (func(), error) {
	return func() {}, ctx.Err()
}

type fileStamp struct {
	size  int64
	mtime int64
}

func stampOf(fi os.FileInfo) fileStamp {
	return fileStamp{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
}
