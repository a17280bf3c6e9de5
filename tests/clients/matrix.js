// An application of the client matrix on node-postgres, run as an old
// version (legacy name only) or a new one (new name only) through
// Switchyard, one round per phase read from stdin; answers `ok` or
// `error ...` per round. Named prepared statements live across phases,
// among them a `SELECT *` prepared in the first round.
//
// Usage: node matrix.js ROLE PORT TABLE

const { Client } = require('pg');
const readline = require('readline');

const [role, port, table] = process.argv.slice(2);
const col = role === 'old' ? 'email' : 'email_address';
const folded = new Set(['backfilled', 'verified', 'reads_switched', 'reads_verified', 'contracted', 'completed']);

async function round(client, phase, n) {
  const email = (k) => `${role}-${phase}-${n}-${k}@example.com`;
  const writes = role === 'old' || !['planned', 'expanded'].includes(phase);
  if (writes) {
    const created = await client.query({
      name: 'create',
      text: `INSERT INTO ${table} (${col}, note) VALUES ($1, 'created') RETURNING id`,
      values: [email(1)],
    });
    const id = created.rows[0].id;
    await client.query(
      `INSERT INTO ${table} (${col}, note) VALUES ($1, 'bulk'), ($2, 'bulk'), ($3, 'bulk')`,
      [email(2), email(3), email(4)],
    );
    await client.query({ name: 'update', text: `UPDATE ${table} SET note = 'updated' WHERE ${col} = $1`, values: [email(2)] });
    const got = await client.query({ name: 'get', text: `SELECT note FROM ${table} WHERE ${col} = $1`, values: [email(2)] });
    if (got.rows[0].note !== 'updated') throw new Error(`get by unique field: ${JSON.stringify(got.rows)}`);
    const seed = 1 + (n % 50);
    const variant = folded.has(phase) ? `seed${seed}@example.com` : `Seed${seed}@Example.COM`;
    await client.query({
      name: 'upsert',
      text: `INSERT INTO ${table} (${col}, note) VALUES ($1, $2) ON CONFLICT (${col}) DO UPDATE SET note = EXCLUDED.note`,
      values: [variant, `upsert-${n}`],
    });
    await client.query('BEGIN');
    await client.query({ name: 'commit-update', text: `UPDATE ${table} SET note = 'committed' WHERE id = $1`, values: [id] });
    await client.query('COMMIT');
  }
  const first = await client.query({ name: 'order', text: `SELECT id, ${col} FROM ${table} ORDER BY ${col} LIMIT 5` });
  if (first.rows.length !== 5) throw new Error('order by');
  if (role === 'old') {
    // Prepared in the first round (before expand), run in every phase.
    const star = await client.query({ name: 'star', text: `SELECT * FROM ${table} WHERE id = $1`, values: [3] });
    if (!(col in star.rows[0])) throw new Error(`star: ${JSON.stringify(star.rows[0])}`);
  }
}

async function main() {
  const client = new Client({ host: '127.0.0.1', port: Number(port), user: 'trust_user', database: 'postgres' });
  await client.connect();
  const lines = readline.createInterface({ input: process.stdin });
  let n = 0;
  for await (const line of lines) {
    const phase = line.trim();
    if (!phase) continue;
    if (phase === 'quit') break;
    n += 1;
    try {
      await round(client, phase, n);
      console.log('ok');
    } catch (e) {
      console.log(`error ${e.code || ''} ${String(e.message).replace(/\n/g, ' ')}`);
    }
  }
  await client.end();
}

main().catch((e) => {
  console.log(`error ${e.message}`);
  process.exit(1);
});
