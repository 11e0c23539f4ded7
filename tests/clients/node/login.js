// node-postgres over TLS with channel binding, verifying pgveil's certificate.
// argv: host port user password ca_file. Prints `<current_user> <upstream ssl>`.
const fs = require('fs')
const { Client } = require('pg')

async function main() {
  const [host, port, user, password, caFile] = process.argv.slice(2)
  const client = new Client({
    host, port: Number(port), user, password, database: 'postgres',
    ssl: { ca: fs.readFileSync(caFile, 'utf8'), rejectUnauthorized: true },
    enableChannelBinding: true,
    connectionTimeoutMillis: 10000,
  })
  await client.connect()
  try {
    const res = await client.query('SELECT current_user AS u, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()')
    console.log(`${res.rows[0].u} ${res.rows[0].ssl ? 't' : 'f'}`)
  } finally {
    await client.end()
  }
}

main().catch((e) => {
  console.error(e.code ? `${e.code} ${e.message}` : e.message)
  process.exit(1)
})
