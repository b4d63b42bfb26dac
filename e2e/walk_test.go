package e2e

import (
	"io/fs"
	"os"
	"path/filepath"
)

// filepathWalk calls fn with the contents of every regular file under dir
// that the test can read.
func filepathWalk(dir string, fn func(path string, data []byte)) error {
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		data, err := os.ReadFile(path)
		if err == nil {
			fn(path, data)
		}
		return nil
	})
}
