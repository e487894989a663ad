// A small storefront journey sent with the vendors' own Node SDKs to a running
// funnelstream serve (tests/e2e/test_sdk_clients.py runs it).
// Usage: node journey.mjs <host> <write key>
import { Analytics } from '@segment/analytics-node'
import { PostHog } from 'posthog-node'

const [host, writeKey] = process.argv.slice(2)
const productUrl = 'https://shop.example/product/tee'

const segment = new Analytics({ writeKey, host, flushAt: 20, maxRetries: 5 })
const failures = []
segment.on('error', (err) => failures.push(String(err && (err.reason || err.message || err))))
for (const i of [0, 1]) {
  const anonymousId = `node-segment-anon-${i}`
  segment.page({ anonymousId, name: 'Tee', properties: { url: productUrl } })
  if (i === 0) {
    segment.track({ anonymousId, event: 'Product Viewed', properties: { product_id: 'tee' } })
    segment.identify({ anonymousId, userId: 'node-segment-user-0', traits: { plan: 'gold' } })
    segment.track({ anonymousId, userId: 'node-segment-user-0', event: 'Order Completed' })
  }
}
await segment.closeAndFlush({ timeout: 30000 })

const posthog = new PostHog(writeKey, { host, flushAt: 20, flushInterval: 0 })
posthog.on('error', (err) => failures.push(String(err && (err.message || err))))
for (const i of [0, 1]) {
  const distinctId = `node-posthog-anon-${i}`
  posthog.capture({ distinctId, event: '$pageview', properties: { $current_url: productUrl } })
  if (i === 0) {
    posthog.capture({ distinctId, event: 'Product Viewed', properties: { product_id: 'tee' } })
    posthog.capture({
      distinctId: 'node-posthog-user-0',
      event: '$identify',
      properties: { $anon_distinct_id: distinctId, $set: { plan: 'gold' } },
    })
    posthog.capture({ distinctId, event: 'Order Completed' })
  }
}
await posthog.shutdown(30000)

if (failures.length) {
  console.error(failures.join('\n'))
  process.exit(1)
}
console.log('sent')
