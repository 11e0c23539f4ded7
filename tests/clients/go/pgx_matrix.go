// pgx v4 (Debian's golang-github-jackc-pgx-v4-dev) through pgveil: every logical type written
// with Go values and read back in pgx's own types, in three modes: statements prepared and
// cached (binary parameters and results), statements described only
// (statement_cache_mode=describe), and the simple protocol with client-side interpolation;
// plus a pipelined batch and a rolled-back transaction. The values are those of
// tests/clients/matrix_values.py. Built in GOPATH mode against /usr/share/gocode.
// Usage: pgx_matrix CONNSTRING TABLE. Prints "pgx ok N".
package main

import (
	"context"
	"fmt"
	"math/big"
	"os"
	"reflect"
	"strings"
	"time"

	"github.com/jackc/pgtype"
	"github.com/jackc/pgx/v4"
)

var types = []string{"text", "varchar", "int2", "int4", "int8", "numeric", "float8", "bool",
	"date", "timestamp", "timestamptz", "uuid", "bytea", "jsonb"}

var uuidBytes = [16]byte{0x6f, 0x1c, 0x1a, 0x4e, 0x8b, 0x1d, 0x4c, 0x36, 0x9b, 0x9c, 0x2f, 0x1e, 0x5d, 0x7a, 0x3b, 0x11}

func value(ty string) interface{} {
	switch ty {
	case "text":
		return "Zoë O'Brien ✓ 日本 patient-note-4471"
	case "varchar":
		return "varchar-Ünïcode-5512"
	case "int2":
		return int16(31337)
	case "int4":
		return int32(1987654321)
	case "int8":
		return int64(8765432109876543)
	case "numeric":
		return &pgtype.Numeric{Int: big.NewInt(987654321), Exp: -4, Status: pgtype.Present}
	case "float8":
		return 12345.625
	case "bool":
		return true
	case "date":
		return time.Date(1987, 6, 5, 0, 0, 0, 0, time.UTC)
	case "timestamp":
		return time.Date(2023, 4, 5, 6, 7, 8, 123456000, time.UTC)
	case "timestamptz":
		return time.Date(2023, 4, 5, 6, 7, 8, 500000000, time.UTC)
	case "uuid":
		return &pgtype.UUID{Bytes: uuidBytes, Status: pgtype.Present}
	case "bytea":
		return append(append([]byte{0, 1}, []byte("bytea-secret-9")...), 0xff)
	case "jsonb":
		j := &pgtype.JSONB{}
		if err := j.Set(jsonValue()); err != nil {
			panic(err)
		}
		return j
	}
	panic(ty)
}

func jsonValue() map[string]interface{} {
	return map[string]interface{}{"diagnosis": "hypertension-8812", "codes": []interface{}{1.0, 2.5, true, nil}}
}

// A destination of pgx's own type for each logical type.
func dest(ty string) interface{} {
	switch ty {
	case "text", "varchar":
		return new(*string)
	case "int2":
		return new(*int16)
	case "int4":
		return new(*int32)
	case "int8":
		return new(*int64)
	case "numeric":
		return new(pgtype.Numeric)
	case "float8":
		return new(*float64)
	case "bool":
		return new(*bool)
	case "date", "timestamp", "timestamptz":
		return new(*time.Time)
	case "uuid":
		return new(pgtype.UUID)
	case "bytea":
		return new([]byte)
	case "jsonb":
		return new(map[string]interface{})
	}
	panic(ty)
}

var checks = 0

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "pgx: "+format+"\n", args...)
	os.Exit(1)
}

// check compares what pgx scanned for a column of type ty with the value written (or NULL).
func check(what, ty string, got interface{}, null bool) {
	checks++
	var v interface{}
	isNull := false
	switch g := got.(type) {
	case *pgtype.Numeric:
		isNull = g.Status == pgtype.Null
		if !isNull {
			r := new(big.Rat).SetInt(g.Int)
			scale := new(big.Rat).SetInt(new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(-g.Exp)), nil))
			if g.Exp >= 0 {
				scale = new(big.Rat).SetInt(new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(g.Exp)), nil))
				r.Mul(r, scale)
			} else {
				r.Quo(r, scale)
			}
			v = r.FloatString(4)
		}
	case *pgtype.UUID:
		isNull = g.Status == pgtype.Null
		v = g.Bytes
	case *[]byte:
		isNull = *g == nil
		v = *g
	case *map[string]interface{}:
		isNull = *g == nil
		v = *g
	default:
		p := reflect.ValueOf(got).Elem()
		isNull = p.IsNil()
		if !isNull {
			v = p.Elem().Interface()
		}
	}
	if null || isNull {
		if null != isNull {
			fail("MISMATCH %s %s: NULL is %v, want %v", what, ty, isNull, null)
		}
		return
	}
	want := value(ty)
	switch ty {
	case "numeric":
		want = "98765.4321"
	case "uuid":
		want = uuidBytes
	case "jsonb":
		want = jsonValue()
	case "date", "timestamp", "timestamptz":
		if !v.(time.Time).Equal(want.(time.Time)) {
			fail("MISMATCH %s %s: %v", what, ty, v)
		}
		return
	}
	if !reflect.DeepEqual(v, want) {
		fail("MISMATCH %s %s: got %#v want %#v", what, ty, v, want)
	}
}

func columns() []string {
	var out []string
	for _, ty := range types {
		out = append(out, "d_"+ty, "r_"+ty)
	}
	return out
}

func roundTrip(ctx context.Context, connString, table string, base int, mode string) {
	if mode == "describe" {
		connString += " statement_cache_mode=describe"
	}
	config, err := pgx.ParseConfig(connString)
	if err != nil {
		fail("%v", err)
	}
	config.PreferSimpleProtocol = mode == "simple"
	conn, err := pgx.ConnectConfig(ctx, config)
	if err != nil {
		fail("%s: connect: %v", mode, err)
	}
	defer conn.Close(ctx)
	must := func(what string, err error) {
		if err != nil {
			fail("%s: %s: %v", mode, what, err)
		}
	}
	_, err = conn.Exec(ctx, "SET TimeZone = 'Pacific/Chatham'")
	must("set", err)
	cols := columns()
	marks := make([]string, len(cols))
	row1 := []interface{}{base + 1}
	row2 := []interface{}{base + 2}
	for i, c := range cols {
		marks[i] = fmt.Sprintf("$%d", i+2)
		row1 = append(row1, value(c[2:]))
		row2 = append(row2, nil)
	}
	insert := fmt.Sprintf("INSERT INTO %s (id, %s) VALUES ($1, %s)", table, strings.Join(cols, ", "), strings.Join(marks, ", "))
	_, err = conn.Exec(ctx, insert, row1...)
	must("insert", err)
	_, err = conn.Exec(ctx, insert, row2...)
	must("insert NULLs", err)
	query := fmt.Sprintf("SELECT %s FROM %s WHERE id = $1", strings.Join(cols, ", "), table)
	for n := 0; n < 3; n++ {
		for _, id := range []int{base + 1, base + 2} {
			dests := make([]interface{}, len(cols))
			for i, c := range cols {
				dests[i] = dest(c[2:])
			}
			must("select", conn.QueryRow(ctx, query, id).Scan(dests...))
			for i, c := range cols {
				check(fmt.Sprintf("%s #%d id %d %s", mode, n, id, c), c[2:], dests[i], id == base+2)
			}
		}
	}
	var found int
	must("search", conn.QueryRow(ctx, fmt.Sprintf("SELECT id FROM %s WHERE d_text = $1 AND d_timestamptz = $2 AND d_uuid = $3 AND d_int8 = $4 AND id BETWEEN $5 AND $6", table),
		value("text"), value("timestamptz"), value("uuid"), value("int8"), base, base+99).Scan(&found))
	checks++
	if found != base+1 {
		fail("%s: search found %d", mode, found)
	}
	// A pipelined batch: several statements, one round trip.
	batch := &pgx.Batch{}
	for i := 10; i < 13; i++ {
		batch.Queue(fmt.Sprintf("INSERT INTO %s (id, r_text, d_date) VALUES ($1, $2, $3)", table), base+i, value("text"), value("date"))
	}
	batch.Queue(fmt.Sprintf("SELECT r_text, d_date FROM %s WHERE id BETWEEN $1 AND $2 ORDER BY id", table), base+10, base+19)
	results := conn.SendBatch(ctx, batch)
	for i := 0; i < 3; i++ {
		_, err := results.Exec()
		must("batch insert", err)
	}
	rows, err := results.Query()
	must("batch select", err)
	seen := 0
	for rows.Next() {
		text, date := dest("text"), dest("date")
		must("batch scan", rows.Scan(text, date))
		check(mode+" batch", "text", text, false)
		check(mode+" batch", "date", date, false)
		seen++
	}
	rows.Close()
	must("batch close", results.Close())
	checks++
	if seen != 3 {
		fail("%s: batch rows %d", mode, seen)
	}
	tx, err := conn.Begin(ctx)
	must("begin", err)
	_, err = tx.Exec(ctx, fmt.Sprintf("UPDATE %s SET r_jsonb = $1 WHERE id = $2", table), value("jsonb"), base+2)
	must("update", err)
	must("rollback", tx.Rollback(ctx))
	after := dest("jsonb")
	must("after", conn.QueryRow(ctx, fmt.Sprintf("SELECT r_jsonb FROM %s WHERE id = $1", table), base+2).Scan(after))
	check(mode+" rolled back", "jsonb", after, true)
}

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	connString, table := os.Args[1], os.Args[2]
	for i, mode := range []string{"prepare", "describe", "simple"} {
		roundTrip(ctx, connString, table, i*100, mode)
	}
	fmt.Printf("pgx ok %d\n", checks)
}
