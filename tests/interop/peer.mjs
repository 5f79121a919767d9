// A js-libp2p peer driven by the Rust tests over stdin/stdout, one JSON object per line.
//
//   node peer.mjs --net <network id> [--port 0]
//
// Out: {"event":"ready","peer_id":...,"addrs":[...]} first; then answers
// {"id":N,"ok":...} or {"id":N,"error":"..."} to commands {"id":N,"cmd":...}, and events
// ({"event":"identify"|"message"|"connected"|"disconnected", ...}) as they happen.
// Commands: dial {addr}, ping {peer|addr}, find_peer {peer}, peers, subscribe {topic},
// publish {topic, data_hex}, stop.

// js-libp2p 3.x uses Promise.withResolvers (Node 22); Node 20 needs it before any import.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new Promise((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}

const { createLibp2p } = await import('libp2p')
const { tcp } = await import('@libp2p/tcp')
const { noise } = await import('@chainsafe/libp2p-noise')
const { yamux } = await import('@chainsafe/libp2p-yamux')
const { identify } = await import('@libp2p/identify')
const { ping } = await import('@libp2p/ping')
const { kadDHT, passthroughMapper } = await import('@libp2p/kad-dht')
const { gossipsub } = await import('@libp2p/gossipsub')
const { multiaddr } = await import('@multiformats/multiaddr')
const { peerIdFromString } = await import('@libp2p/peer-id')
const { blake3 } = await import('@noble/hashes/blake3.js')
const { blake2b } = await import('@noble/hashes/blake2.js')
const { preSharedKey } = await import('@libp2p/pnet')
const { lpStream } = await import('@libp2p/utils')
const protobuf = (await import('protobufjs')).default
const readline = await import('node:readline')
const path = await import('node:path')
const { fileURLToPath } = await import('node:url')

// Our messages, from the repository's .proto files (net.proto imports chain.proto).
const schemas = path.join(path.dirname(fileURLToPath(import.meta.url)), '../../proto/schemas')
const pb = await protobuf.load(path.join(schemas, 'net.proto'))
const T = (name) => pb.lookupType(name)
const Status = T('chainmesh.net.v1.Status')
const SyncRequest = T('chainmesh.net.v1.SyncRequest')
const SyncResponse = T('chainmesh.net.v1.SyncResponse')

function arg (name, fallback) {
  const i = process.argv.indexOf(name)
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback
}

const net = arg('--net')
if (!net) {
  process.stderr.write('usage: node peer.mjs --net <network id> [--port N]\n')
  process.exit(2)
}
const port = Number(arg('--port', '0'))
// The Mina profile: pnet keyed by the chain id, Mina's muxer and Kademlia names.
const minaChainId = arg('--mina')

const MAX_RESPONSE = 8 * 1024 * 1024
const enc = new TextEncoder()
const fromHex = (h) => Uint8Array.from(Buffer.from(h, 'hex'))
const u64 = (n) => {
  const b = new Uint8Array(8)
  new DataView(b.buffer).setBigUint64(0, BigInt(n.toString()))
  return b
}
const concat = (...parts) => {
  const len = parts.reduce((n, p) => n + p.length, 0)
  const outb = new Uint8Array(len)
  let o = 0
  for (const p of parts) { outb.set(p, o); o += p.length }
  return outb
}

// The canonical encodings of docs/architecture.md, written independently of the Rust code.
function headerHash (h) {
  const signing = concat(enc.encode('chainmesh/header/v1\0'), h.parent, u64(h.height), u64(h.slot),
    u64(h.timestampMs), h.txRoot, h.stateRoot, h.producer)
  return blake3(concat(signing, h.signature))
}
function txId (t) {
  return blake3(concat(enc.encode('chainmesh/txid/v1\0'), t.from, t.to, u64(t.amount), u64(t.fee),
    u64(t.nonce), t.signature))
}
function txRoot (txs) {
  return blake3(concat(enc.encode('chainmesh/txroot/v1\0'), u64(txs.length), ...txs.map(txId)))
}

// One request, one response per stream, each an unsigned-varint length-prefixed frame.
async function ask (peer, protocol, Req, Resp, obj) {
  const stream = await node.dialProtocol(peerIdFromString(peer), protocol)
  const lp = lpStream(stream, { maxDataLength: MAX_RESPONSE })
  await lp.write(Req.encode(Req.fromObject(obj)).finish())
  const frame = await lp.read({ signal: AbortSignal.timeout(20000) })
  await stream.close().catch(() => {})
  return Resp.decode(frame.subarray())
}

const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
const hex = (u8) => Buffer.from(u8).toString('hex')

// PSK = BLAKE2b-256 of "/coda/0.0.1/<chain id>", in the swarm-key format pnet reads.
function minaProtector (chainId) {
  const psk = blake2b(enc.encode(`/coda/0.0.1/${chainId}`), { dkLen: 32 })
  return preSharedKey({ psk: enc.encode(`/key/swarm/psk/1.0.0/\n/base16/\n${hex(psk)}`) })
}

// Mina's gossip message id: BLAKE2b-256 of the data keyed with the topic (with the
// topic's BLAKE2b-256 when the topic is longer than the 64-byte key limit).
function minaMessageId (topic, data) {
  let key = enc.encode(topic)
  if (key.length > 64) key = blake2b(key, { dkLen: 32 })
  return blake2b(data, { key, dkLen: 32 })
}

// Upstream yamux under another protocol name.
function renamed (factory, protocol) {
  return (components) => {
    const muxer = factory(components)
    muxer.protocol = protocol
    return muxer
  }
}

const node = await createLibp2p({
  ...(minaChainId ? { connectionProtector: minaProtector(minaChainId) } : {}),
  nodeInfo: { userAgent: 'chainmesh-interop-js/1 (js-libp2p)' },
  addresses: { listen: [`/ip4/127.0.0.1/tcp/${port}`] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [minaChainId ? renamed(yamux(), '/coda/yamux/1.0.0') : yamux()],
  services: {
    identify: identify(),
    ping: ping(),
    // Our protocol name; a server (js answers only then) that keeps loopback peers.
    dht: kadDHT({
      protocol: minaChainId ? '/coda/kad/1.0.0' : `/chainmesh/${net}/kad/1`,
      clientMode: false,
      peerInfoMapper: passthroughMapper
    }),
    // The node's message id is blake3 of the payload; both sides must agree.
    pubsub: gossipsub({
      globalSignaturePolicy: 'StrictSign',
      msgIdFn: (msg) => minaChainId ? minaMessageId(msg.topic, msg.data) : blake3(msg.data),
      allowPublishToZeroTopicPeers: true,
      emitSelf: false
    })
  }
})

node.addEventListener('peer:identify', (e) => {
  const d = e.detail
  out({ event: 'identify', peer: d.peerId.toString(), agent: d.agentVersion, protocols: d.protocols })
})
node.addEventListener('peer:connect', (e) => out({ event: 'connected', peer: e.detail.toString() }))
node.addEventListener('peer:disconnect', (e) => out({ event: 'disconnected', peer: e.detail.toString() }))
node.services.pubsub.addEventListener('message', (e) => {
  const m = e.detail
  const id = minaChainId ? minaMessageId(m.topic, m.data) : blake3(m.data)
  out({ event: 'message', topic: m.topic, from: m.from?.toString(), data_hex: hex(m.data), id_hex: hex(id) })
})

await node.start()
out({ event: 'ready', peer_id: node.peerId.toString(), addrs: node.getMultiaddrs().map(String) })

const target = (c) => c.addr ? multiaddr(c.addr) : peerIdFromString(c.peer)

async function run (c) {
  switch (c.cmd) {
    case 'dial': {
      const conn = await node.dial(multiaddr(c.addr))
      return { peer: conn.remotePeer.toString() }
    }
    case 'ping':
      return { rtt_ms: await node.services.ping.ping(target(c)) }
    case 'find_peer': {
      const info = await node.peerRouting.findPeer(peerIdFromString(c.peer), { signal: AbortSignal.timeout(20000) })
      return { peer: info.id.toString(), addrs: info.multiaddrs.map(String) }
    }
    case 'peers':
      return node.getPeers().map(String)
    case 'subscribe':
      node.services.pubsub.subscribe(c.topic)
      return {}
    case 'publish': {
      const data = fromHex(c.data_hex)
      const r = await node.services.pubsub.publish(c.topic, data)
      const id = minaChainId ? minaMessageId(c.topic, data) : blake3(data)
      return { recipients: r.recipients.length, id_hex: hex(id) }
    }
    case 'mina_px': {
      // /mina/peer-exchange: send nothing, read the JSON list (at most 8 KiB).
      const stream = await node.dialProtocol(peerIdFromString(c.peer), '/mina/peer-exchange',
        { signal: AbortSignal.timeout(10000) })
      // Reading starts before our half-close: an answer that arrives while the close is
      // under way must find its reader.
      const read = (async () => {
        const chunks = []
        let n = 0
        for await (const chunk of stream) {
          const b = chunk.subarray()
          n += b.length
          if (n > 8192) throw new Error('peer exchange answer over 8 KiB')
          chunks.push(b)
        }
        return JSON.parse(Buffer.concat(chunks).toString('utf8'))
      })()
      // Nothing to say: half-close, so the other side reads an empty request.
      stream.close().catch(() => {})
      const timeout = new Promise((_resolve, reject) =>
        setTimeout(() => reject(new Error('no peer exchange answer in 10 s')), 10000))
      return await Promise.race([read, timeout])
    }
    case 'status': {
      // Our status (the genesis and tip the test gives), and the node's in return.
      const theirs = await ask(c.peer, `/chainmesh/${c.network_id ?? net}/status/1`, Status, Status, {
        version: c.version ?? 1,
        genesisHash: fromHex(c.genesis),
        networkId: c.network_id ?? net,
        bestHeight: 0,
        bestHash: fromHex(c.genesis),
        cumulativeWeight: new Uint8Array(0),
        agent: 'chainmesh-interop-js/1 (js-libp2p)'
      })
      return {
        version: theirs.version,
        genesis: hex(theirs.genesisHash),
        network_id: theirs.networkId,
        best_height: Number(theirs.bestHeight),
        best_hash: hex(theirs.bestHash)
      }
    }
    case 'headers': {
      // Headers after a locator; every hash computed here, every link checked here.
      const r = await ask(c.peer, `/chainmesh/${net}/sync/1`, SyncRequest, SyncResponse, {
        getHeaders: { locator: c.locator.map(fromHex), max: c.max }
      })
      if (!r.headers) throw new Error(`expected headers, got ${JSON.stringify(r.toJSON())}`)
      let parent = fromHex(c.locator[0])
      const hashes = []
      for (const h of r.headers.headers) {
        if (hex(h.parent) !== hex(parent)) throw new Error(`header ${h.height} does not link to its parent`)
        parent = headerHash(h)
        hashes.push({ height: Number(h.height), hash: hex(parent), tx_root: hex(h.txRoot) })
      }
      return hashes
    }
    case 'blocks': {
      const r = await ask(c.peer, `/chainmesh/${net}/sync/1`, SyncRequest, SyncResponse, {
        getBlocks: { hashes: { hashes: c.hashes.map(fromHex) } }
      })
      if (!r.blocks) throw new Error(`expected blocks, got ${JSON.stringify(r.toJSON())}`)
      return r.blocks.blocks.map((b) => ({
        hash: hex(headerHash(b.header)),
        txs: b.txs.length,
        tx_root_ok: hex(txRoot(b.txs)) === hex(b.header.txRoot),
        tx_ids: b.txs.map((t) => hex(txId(t)))
      }))
    }
    case 'stop':
      await node.stop()
      setTimeout(() => process.exit(0), 50)
      return {}
    default:
      throw new Error(`unknown command ${c.cmd}`)
  }
}

const rl = readline.createInterface({ input: process.stdin })
rl.on('line', async (line) => {
  let c
  try {
    c = JSON.parse(line)
  } catch (e) {
    out({ error: `not JSON: ${e.message}` })
    return
  }
  try {
    out({ id: c.id, ok: await run(c) })
  } catch (e) {
    out({ id: c.id, error: String(e?.message ?? e) })
  }
})
// The test ended (or died): so does this peer.
rl.on('close', async () => {
  await node.stop().catch(() => {})
  process.exit(0)
})
