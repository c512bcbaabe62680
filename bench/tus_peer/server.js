// @tus/server with @tus/file-store: the peer of csvstore's tus endpoint in
// `python -m bench.run --only tus`. Usage: node server.js PORT DIR
// Serves /files/ on 127.0.0.1:PORT and stores uploads in DIR (FileStore does not fsync).
import { mkdirSync } from "node:fs";
import { Server } from "@tus/server";
import { FileStore } from "@tus/file-store";

const [port, directory] = process.argv.slice(2);
if (!port || !directory) {
  console.error("usage: node server.js PORT DIR");
  process.exit(2);
}
mkdirSync(directory, { recursive: true });
const server = new Server({
  path: "/files",
  datastore: new FileStore({ directory }),
});
server.listen({ host: "127.0.0.1", port: Number(port) }, () => {
  console.log(`@tus/server listening on 127.0.0.1:${port}, files in ${directory}`);
});
process.on("SIGTERM", () => process.exit(0));
