// node-postgres (pg) through pgveil: every logical type written with JavaScript values and
// read back in pg's own types; unnamed statements (Parse "", Bind, Describe P, Execute,
// Sync), named prepared statements (Parse once, then Bind, Describe P, Execute), a pool, a
// transaction rolled back. Not `binary: true`: node-postgres decodes every DataRow as UTF-8
// (pg-protocol has no binary mode), so binary results are corrupt with any server.
// argv: host port user password table. Run with TZ=UTC. Prints "node-pg ok N".
const { Client, Pool } = require('pg')
const { COLUMNS, valueOf, Checker } = require('./values')

const [host, port, user, password, table] = process.argv.slice(2)
const config = { host, port: Number(port), user, password, database: 'postgres', ssl: false, connectionTimeoutMillis: 10000 }
const check = new Checker('node-pg')

const names = COLUMNS.join(', ')
const marks = COLUMNS.map((_, i) => `$${i + 2}`).join(', ')

async function main() {
  const client = new Client(config)
  await client.connect()
  try {
    await client.query("SET TimeZone = 'America/New_York'")
    await client.query(`INSERT INTO ${table} (id, ${names}) VALUES ($1, ${marks})`, [1, ...COLUMNS.map(valueOf)])
    await client.query(`INSERT INTO ${table} (id, ${names}) VALUES ($1, ${marks})`, [2, ...COLUMNS.map(() => null)])
    for (let n = 0; n < 2; n++) {
      check.phase = `unnamed #${n}`
      let res = await client.query(`SELECT ${names} FROM ${table} WHERE id = $1`, [1])
      check.row(res.rows[0])
      res = await client.query(`SELECT ${names} FROM ${table} WHERE id = $1`, [2])
      check.nullRow(res.rows[0])
    }
    // Named: parsed once, then Bind, Describe P, Execute, Sync.
    for (let n = 0; n < 3; n++) {
      check.phase = `named #${n}`
      const res = await client.query({ name: 'matrix_select', text: `SELECT ${names} FROM ${table} WHERE id = $1`, values: [1] })
      check.row(res.rows[0])
    }
    const found = await client.query(
      `SELECT id FROM ${table} WHERE d_text = $1 AND d_date = $2 AND d_uuid = $3 AND d_bytea = $4 AND d_jsonb = $5 ORDER BY id`,
      [valueOf('d_text'), valueOf('d_date'), valueOf('d_uuid'), valueOf('d_bytea'), valueOf('d_jsonb')])
    check.equal('search', found.rows.map((r) => r.id), [1])
    // A transaction rolled back leaves nothing; a committed update stays.
    await client.query('BEGIN')
    await client.query(`UPDATE ${table} SET r_text = $1 WHERE id = 2`, [valueOf('r_text')])
    await client.query('ROLLBACK')
    const after = await client.query(`SELECT r_text FROM ${table} WHERE id = 2`)
    check.equal('rolled back', after.rows[0].r_text, null)
    const update = await client.query(`UPDATE ${table} SET r_timestamptz = $1 WHERE id = $2`, [valueOf('r_timestamptz'), 2])
    check.equal('update', update.rowCount, 1)
    const updated = await client.query(`SELECT r_timestamptz FROM ${table} WHERE id = 2`)
    check.value('r_timestamptz', updated.rows[0].r_timestamptz)
  } finally {
    await client.end()
  }
  // A pool: concurrent queries on several connections.
  const pool = new Pool({ ...config, max: 3 })
  try {
    const inserts = [3, 4, 5].map((id) => pool.query(
      `INSERT INTO ${table} (id, d_varchar, r_float8, d_bool) VALUES ($1, $2, $3, $4)`,
      [id, valueOf('d_varchar'), valueOf('r_float8'), valueOf('d_bool')]))
    await Promise.all(inserts)
    const res = await pool.query(`SELECT id, d_varchar, r_float8, d_bool FROM ${table} WHERE d_varchar = $1 ORDER BY id`, [valueOf('d_varchar')])
    check.equal('pool ids', res.rows.map((r) => r.id), [1, 3, 4, 5])
    for (const row of res.rows) check.row(row, ['d_varchar', 'r_float8', 'd_bool'])
  } finally {
    await pool.end()
  }
  check.done()
}

main().catch((e) => {
  console.error(`node-pg: ${e.code || ''} ${e.message}`)
  process.exit(1)
})
