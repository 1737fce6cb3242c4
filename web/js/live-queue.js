// The live page's bookkeeping apart from the DOM: the events waiting for the next frame, and
// the count of zone crossings over the last hour. Both stay bounded however fast events come.

const isCrossing = (event) => event.type === "zone_enter" || event.type === "zone_exit";
const timeOf = (event) => Date.parse(event.updated_at) || 0;

/**
 * Events waiting to be drawn, one entry per id holding its highest version, so that
 * several versions of one event arriving between two frames cost one repaint.
 */
export class RenderQueue {
  constructor() {
    this.pending = new Map(); // id -> {event, live, time}
  }

  get size() {
    return this.pending.size;
  }

  has(id) {
    return this.pending.has(id);
  }

  /** Queue `event` (already known to be the newest version); `live` sticks once set. */
  put(event, live) {
    const queued = this.pending.get(event.id);
    this.pending.set(event.id, {
      event,
      live: live || Boolean(queued && queued.live),
      time: timeOf(event),
    });
  }

  delete(id) {
    this.pending.delete(id);
  }

  /**
   * Forget the zone crossings that would never show: beyond the `keep` newest of those not on
   * screen yet, the feed would trim their rows at once and the map drops their markers first.
   * `isShown(id)` tells whether an event already has a row or a marker, which must be updated.
   * Returns the ids forgotten.
   */
  dropHidden(isShown, keep) {
    const candidates = [];
    for (const [id, entry] of this.pending) {
      if (isCrossing(entry.event) && !isShown(id)) candidates.push(entry);
    }
    if (candidates.length <= keep) return [];
    candidates.sort((a, b) => b.time - a.time);
    const dropped = [];
    for (const entry of candidates.slice(keep)) {
      this.pending.delete(entry.event.id);
      dropped.push(entry.event.id);
    }
    return dropped;
  }

  /**
   * The queued entries in the order to draw them: accidents, jams and hazards first (few and
   * important), then zone crossings newest first, so that a frame's budget goes to what a
   * reader looks at. Entries stay queued until `delete`d.
   */
  ordered() {
    const important = [];
    const crossings = [];
    for (const entry of this.pending.values()) {
      (isCrossing(entry.event) ? crossings : important).push(entry);
    }
    important.sort((a, b) => a.time - b.time);
    crossings.sort((a, b) => b.time - a.time);
    return important.concat(crossings);
  }
}

/** The number of distinct zone crossings whose time falls in the last `windowMs`. */
export class CrossingWindow {
  constructor(windowMs, rememberIds) {
    this.windowMs = windowMs;
    this.rememberIds = rememberIds; // ids kept to recognise a crossing delivered twice
    this.ids = new Set(); // in insertion order, the oldest dropped first
    this.times = []; // ascending; those before `head` have left the window
    this.head = 0;
  }

  /** Count a crossing unless its id was counted already (node items are read again on reconnect). */
  add(id, time) {
    if (this.ids.has(id)) return false;
    this.ids.add(id);
    if (this.ids.size > this.rememberIds) this.ids.delete(this.ids.values().next().value);
    const times = this.times;
    if (!times.length || time >= times[times.length - 1]) {
      times.push(time);
    } else {
      let lo = this.head;
      let hi = times.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (times[mid] <= time) lo = mid + 1;
        else hi = mid;
      }
      times.splice(lo, 0, time);
    }
    return true;
  }

  count(now) {
    const since = now - this.windowMs;
    const times = this.times;
    while (this.head < times.length && times[this.head] < since) this.head += 1;
    // Compact now and then rather than shifting the array at every step.
    if (this.head > 4096 && this.head * 2 > times.length) {
      times.splice(0, this.head);
      this.head = 0;
    }
    return times.length - this.head;
  }
}

/** At most `max` uses in any `windowMs`: `take(now)` says whether one more fits, and counts it. */
export class SlidingBudget {
  constructor(windowMs, max) {
    this.windowMs = windowMs;
    this.max = max;
    this.used = []; // times, ascending
  }

  take(now) {
    const since = now - this.windowMs;
    let expired = 0;
    while (expired < this.used.length && this.used[expired] <= since) expired += 1;
    if (expired) this.used.splice(0, expired);
    if (this.used.length >= this.max) return false;
    this.used.push(now);
    return true;
  }
}

/**
 * Paces the drawing of a stream: while more than `calmPerS` items a second were drawn, the next
 * group waits until `intervalMs` after the previous one (and holds everything that came since).
 */
export class Pacer {
  constructor(calmPerS, intervalMs) {
    this.calmPerS = calmPerS;
    this.intervalMs = intervalMs;
    this.groups = []; // [time, count] of the groups drawn in the last second, oldest first
  }

  /** How long to wait before drawing the next group (0: now). */
  wait(now) {
    let expired = 0;
    while (expired < this.groups.length && this.groups[expired][0] <= now - 1000) expired += 1;
    if (expired) this.groups.splice(0, expired);
    let recent = 0;
    for (const [, count] of this.groups) recent += count;
    if (recent < this.calmPerS) return 0;
    return Math.max(0, this.groups[this.groups.length - 1][0] + this.intervalMs - now);
  }

  drew(now, count) {
    if (count) this.groups.push([now, count]);
  }
}
