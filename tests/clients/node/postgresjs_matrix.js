// postgres.js through pgveil: every logical type written with JavaScript values and read
// back in postgres.js's own types. Named statements prepared on first use (Parse, Describe S,
// Flush, then Bind, Execute, Sync; cached ones just Bind, Execute, Sync), unnamed ones
// (`prepare: false`), tagged templates with types inferred from the values, a multi-row
// insert helper, a cursor (Execute with a row limit, Flush), a transaction rolled back.
// argv: host port user password table. Run with TZ=UTC. Prints "postgresjs ok N".
const postgres = require('postgres')
const { COLUMNS, valueOf, Checker } = require('./values')

const [host, port, user, password, table] = process.argv.slice(2)
const check = new Checker('postgresjs')
const names = COLUMNS.join(', ')
const marks = COLUMNS.map((_, i) => `$${i + 2}`).join(', ')

function connect(prepare) {
  return postgres({
    host, port: Number(port), user, password, database: 'postgres', ssl: false,
    prepare, max: 1, connect_timeout: 10, onnotice: () => {},
    // A session time zone other than the client's: timestamptz values travel with offsets.
    connection: { TimeZone: 'Asia/Kolkata' },
  })
}

async function roundTrip(sql, base, what) {
  await sql.unsafe(`INSERT INTO ${table} (id, ${names}) VALUES ($1, ${marks})`, [base + 1, ...COLUMNS.map(valueOf)])
  await sql.unsafe(`INSERT INTO ${table} (id, ${names}) VALUES ($1, ${marks})`, [base + 2, ...COLUMNS.map(() => null)])
  for (let n = 0; n < 3; n++) {
    const [row] = await sql.unsafe(`SELECT ${names} FROM ${table} WHERE id = $1`, [base + 1])
    check.row(row)
    const [empty] = await sql.unsafe(`SELECT ${names} FROM ${table} WHERE id = $1`, [base + 2])
    check.nullRow(empty)
  }
  // Tagged templates: parameter types inferred from the values (Date, Buffer, boolean).
  const found = await sql`
    SELECT id FROM ${sql(table)}
    WHERE d_text = ${valueOf('d_text')} AND d_timestamptz = ${valueOf('d_timestamptz')}
      AND d_bytea = ${valueOf('d_bytea')} AND d_bool = ${valueOf('d_bool')}
      AND d_int8 = ${valueOf('d_int8')} AND id BETWEEN ${base} AND ${base + 99}`
  check.equal(`${what} search`, found.map((r) => r.id), [base + 1])
  const typed = await sql`SELECT ${sql(['r_date', 'r_jsonb', 'd_numeric', 'r_uuid'])} FROM ${sql(table)} WHERE id = ${base + 1}`
  check.row(typed[0], ['r_date', 'r_jsonb', 'd_numeric', 'r_uuid'])
  // The multi-row insert helper: one INSERT with VALUES ($1, $2, $3), ($4, $5, $6), ...
  const rows = [10, 11, 12].map((n) => ({ id: base + n, r_varchar: valueOf('r_varchar'), d_int4: valueOf('d_int4'), r_timestamp: valueOf('r_timestamp') }))
  await sql`INSERT INTO ${sql(table)} ${sql(rows, 'id', 'r_varchar', 'd_int4', 'r_timestamp')}`
  // A cursor: Execute with a row limit, Flush, PortalSuspended, again.
  let seen = 0
  await sql`SELECT id, r_varchar, d_int4, r_timestamp FROM ${sql(table)} WHERE id BETWEEN ${base + 10} AND ${base + 19} ORDER BY id`
    .cursor(2, (batch) => {
      for (const row of batch) {
        check.row(row, ['r_varchar', 'd_int4', 'r_timestamp'])
        seen++
      }
    })
  check.equal(`${what} cursor rows`, seen, 3)
  await sql.begin(async (tx) => {
    await tx`UPDATE ${sql(table)} SET r_float8 = ${valueOf('r_float8')} WHERE id = ${base + 2}`
    const [row] = await tx`SELECT r_float8 FROM ${sql(table)} WHERE id = ${base + 2}`
    check.value('r_float8', row.r_float8)
    await tx`SELECT 1`.then(() => { throw new Error('roll back') })
  }).catch((e) => { if (e.message !== 'roll back') throw e })
  const [after] = await sql`SELECT r_float8 FROM ${sql(table)} WHERE id = ${base + 2}`
  check.equal(`${what} rolled back`, after.r_float8, null)
}

async function main() {
  for (const [prepare, base] of [[true, 0], [false, 100]]) {
    const sql = connect(prepare)
    try {
      await roundTrip(sql, base, `prepare=${prepare}`)
    } finally {
      await sql.end({ timeout: 5 })
    }
  }
  check.done()
}

main().catch((e) => {
  console.error(`postgresjs: ${e.code || ''} ${e.message}`)
  process.exit(1)
})
