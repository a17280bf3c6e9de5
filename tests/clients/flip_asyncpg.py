# Executes one INSERT through asyncpg's statement cache once per line read
# from stdin and prints the new row's id. Usage: python flip_asyncpg.py PORT
import asyncio
import sys


async def main(port):
    import asyncpg
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="trust_user", database="postgres", ssl=False)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        value = await conn.fetchval("insert into users(email) values ($1) returning id", line.strip())
        print(value, flush=True)
    await conn.close()


asyncio.run(main(int(sys.argv[1])))
