// The values the node clients of tests/drivers/ write through pgveil and read back (the
// same as tests/clients/matrix_values.py: change them together), and the checks they share.
// Run with TZ=UTC, so dates without a time zone are read as UTC by both drivers.
const assert = require('assert')

const TYPES = [
  'text', 'varchar', 'int2', 'int4', 'int8', 'numeric', 'float8', 'bool',
  'date', 'timestamp', 'timestamptz', 'uuid', 'bytea', 'jsonb',
]

// What each client writes, in JavaScript's own types.
const VALUES = {
  text: "Zoë O'Brien ✓ 日本 patient-note-4471",
  varchar: 'varchar-Ünïcode-5512',
  int2: 31337,
  int4: 1987654321,
  int8: '8765432109876543',
  numeric: '98765.4321',
  float8: 12345.625,
  bool: true,
  date: new Date(Date.UTC(1987, 5, 5)),
  timestamp: new Date(Date.UTC(2023, 3, 5, 6, 7, 8, 123)),
  timestamptz: new Date(Date.UTC(2023, 3, 5, 6, 7, 8, 500)),
  uuid: '6f1c1a4e-8b1d-4c36-9b9c-2f1e5d7a3b11',
  bytea: Buffer.concat([Buffer.from([0, 1]), Buffer.from('bytea-secret-9'), Buffer.from([0xff])]),
  jsonb: { diagnosis: 'hypertension-8812', codes: [1, 2.5, true, null] },
}

// Every protected column of a matrix table: d_<type> (deterministic), r_<type> (randomized).
const COLUMNS = TYPES.flatMap((ty) => [`d_${ty}`, `r_${ty}`])

const typeOf = (column) => column.slice(2)
const valueOf = (column) => VALUES[typeOf(column)]

// The JavaScript class each type is read back as (both drivers' defaults: 64-bit integers
// and numerics as strings, so no precision is lost).
const CLASSES = {
  text: 'string', varchar: 'string', int2: 'number', int4: 'number', int8: 'string',
  numeric: 'string', float8: 'number', bool: 'boolean', date: 'Date', timestamp: 'Date',
  timestamptz: 'Date', uuid: 'string', bytea: 'Buffer', jsonb: 'object',
}

function classOf(value) {
  if (value instanceof Date) return 'Date'
  if (Buffer.isBuffer(value)) return 'Buffer'
  return typeof value
}

class Checker {
  constructor(client) {
    this.client = client
    this.count = 0
    // Where the client is, for the message of a mismatch.
    this.phase = ''
  }

  fail(what) {
    console.error(`${this.client}: MISMATCH (${this.phase}) ${what}`)
    process.exit(1)
  }

  equal(what, got, want) {
    this.count++
    try {
      assert.deepStrictEqual(got, want)
    } catch (e) {
      this.fail(`${what}: got ${JSON.stringify(got)} want ${JSON.stringify(want)}`)
    }
  }

  // `got` is what the driver returned for `column`: the right class and value.
  value(column, got) {
    const ty = typeOf(column)
    this.count++
    if (classOf(got) !== CLASSES[ty]) {
      this.fail(`${column}: got a ${classOf(got)}, want a ${CLASSES[ty]}`)
    }
    const want = VALUES[ty]
    if (want instanceof Date) {
      this.equal(column, got.getTime(), want.getTime())
    } else if (Buffer.isBuffer(want)) {
      this.equal(column, got.toString('hex'), want.toString('hex'))
    } else {
      this.equal(column, got, want)
    }
  }

  row(row, columns = COLUMNS) {
    for (const column of columns) this.value(column, row[column])
  }

  nullRow(row, columns = COLUMNS) {
    for (const column of columns) this.equal(`${column} is NULL`, row[column], null)
  }

  done() {
    console.log(`${this.client} ok ${this.count}`)
  }
}

module.exports = { TYPES, VALUES, COLUMNS, typeOf, valueOf, Checker }
