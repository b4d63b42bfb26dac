package rewrite

import "testing"

// TestScalarSQL: comparisons with a parameter get a single-candidate form
// (col = $n::bytea) next to the array one, for parameters used only that
// way, and none when the statement has constants.
func TestScalarSQL(t *testing.T) {
	cases := []struct {
		sql, scalar  string
		scalarParams []int // 1-based
	}{
		{"SELECT id, ssn FROM users WHERE email = $1",
			"SELECT id, ssn FROM users WHERE email = $1::bytea", []int{1}},
		{"SELECT id FROM users WHERE $1 = email AND id > $2",
			"SELECT id FROM users WHERE email = $1::bytea AND id > $2", []int{1}},
		{"SELECT id FROM users WHERE email <> $1",
			"SELECT id FROM users WHERE email <> $1::bytea", []int{1}},
		{"SELECT id FROM users WHERE email = $1 OR email = $1",
			"SELECT id FROM users WHERE email = $1::bytea OR email = $1::bytea", []int{1}},
		{"UPDATE users SET ssn = $1 WHERE email = $2",
			"UPDATE users SET ssn = $1 WHERE email = $2::bytea", []int{2}},
		// Used in an IN list too: only the array form takes it.
		{"SELECT id FROM users WHERE email = $1 OR email IN ($1, $2)", "", nil},
		// IN alone has no scalar form.
		{"SELECT id FROM users WHERE email IN ($1, $2)", "", nil},
		// A policy constant: Literal offsets refer to SQL, so no ScalarSQL.
		{"SELECT id FROM users WHERE email = $1 AND dob = '2001-02-03'", "", []int{1}},
		// Nothing to compare.
		{"INSERT INTO users (ssn, email) VALUES ($1, $2)", "", nil},
	}
	for _, c := range cases {
		// Twice: the second analysis comes from a cache.
		a := testAnalyzer(t)
		for round := 0; round < 2; round++ {
			r := a.Analyze(c.sql, nil)
			if r.Refusal != nil {
				t.Fatalf("%q refused: %v", c.sql, r.Refusal)
			}
			if r.ScalarSQL != c.scalar {
				t.Errorf("%q (round %d):\nScalarSQL %q\nwant      %q", c.sql, round, r.ScalarSQL, c.scalar)
			}
			var got []int
			for i, p := range r.Params {
				if p.Scalar {
					got = append(got, i+1)
				}
			}
			if len(got) != len(c.scalarParams) || (len(got) > 0 && got[0] != c.scalarParams[0]) {
				t.Errorf("%q: scalar params %v, want %v", c.sql, got, c.scalarParams)
			}
		}
	}
	// A cached template renders ScalarSQL for the statement with other
	// constants too.
	a := testAnalyzer(t)
	a.Analyze("SELECT id FROM users WHERE email = $1 AND id > 5", nil)
	r := a.Analyze("SELECT id FROM users WHERE email = $1 AND id > 7", nil)
	if want := "SELECT id FROM users WHERE email = $1::bytea AND id > 7"; r.ScalarSQL != want {
		t.Errorf("template: ScalarSQL %q, want %q", r.ScalarSQL, want)
	}
}
