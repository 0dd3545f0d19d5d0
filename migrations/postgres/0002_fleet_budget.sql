-- The account's rate budget shared by the workers of a fleet (Doorman's capacity leases), and
-- what `status` shows of each worker.
--
-- A pool is one limit shared by several workers: `api:<Action>` (per account and API) or
-- `ip:<address>` / `host:<name>` (per egress address). Each worker states, on every heartbeat,
-- the pool's capacity as it computes it (the smallest live statement holds) and what it could
-- use (`want`); the function below grants it a share such that the shares held under unexpired
-- leases never sum above the capacity. Shares are calls per second; a worker paces locally to
-- its share with no burst, so no call needs a round trip.

ALTER TABLE workers ADD COLUMN heartbeat_at     TIMESTAMPTZ      NOT NULL DEFAULT now();
ALTER TABLE workers ADD COLUMN operation        TEXT;
-- The addresses it sends from, comma-separated ('' = the host's default).
ALTER TABLE workers ADD COLUMN sources          TEXT             NOT NULL DEFAULT '';
-- The public address its calls leave from when it shares one with others (`--egress-ip`).
ALTER TABLE workers ADD COLUMN egress           TEXT;
-- Calls it sent in the last second, as of its last heartbeat.
ALTER TABLE workers ADD COLUMN calls_per_second DOUBLE PRECISION NOT NULL DEFAULT 0;

-- One row per pool: locked by each heartbeat that touches the pool, so grants are computed one
-- at a time.
CREATE TABLE budget_pools (
    pool TEXT NOT NULL PRIMARY KEY
);

CREATE TABLE budget_grants (
    pool           TEXT        NOT NULL REFERENCES budget_pools (pool),
    worker         TEXT        NOT NULL REFERENCES workers (id),
    -- The pool's capacity as this worker computes it (limit × (1 − headroom)).
    cap            INTEGER     NOT NULL,
    -- What it could use; 0: nothing.
    want           INTEGER     NOT NULL,
    -- Its fair share (water-filled over the live workers' wants) and what it holds now.
    target         INTEGER     NOT NULL DEFAULT 0,
    granted        INTEGER     NOT NULL DEFAULT 0,
    -- After a share is lowered the worker may have sent at the old rate in the last second:
    -- the old share stays counted as its own until `reserved_until`.
    reserved       INTEGER     NOT NULL DEFAULT 0,
    reserved_until TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (pool, worker)
);
CREATE INDEX budget_grants_by_worker ON budget_grants (worker);

-- One round trip per worker per heartbeat: renews the lease (only a live, unexpired one: a
-- worker whose lease ran out holds nothing and must not send), records its calls/s, and for
-- each pool (arrays in the same order) states its capacity and want and returns its share.
-- `short` says some share is below the worker's fair target (another worker still holds it):
-- the worker beats again sooner.
CREATE FUNCTION fleet_heartbeat(
    p_worker TEXT,
    p_ttl    DOUBLE PRECISION,
    p_hold   DOUBLE PRECISION,
    p_calls  DOUBLE PRECISION,
    p_pools  TEXT[],
    p_caps   INTEGER[],
    p_wants  INTEGER[]
) RETURNS TABLE (renewed BOOLEAN, granted INTEGER[], short BOOLEAN)
LANGUAGE plpgsql AS $$
DECLARE
    v_lease  TIMESTAMPTZ;
    v_out    INTEGER[] := array_fill(0, ARRAY[coalesce(array_length(p_pools, 1), 0)]);
    v_short  BOOLEAN := false;
    k        INTEGER;
    v_pool   TEXT;
    v_cap    INTEGER;
    v_left   INTEGER;
    v_n      INTEGER;
    v_fair   INTEGER;
    v_target INTEGER;
    v_others INTEGER;
    v_mine   INTEGER;
    r        RECORD;
BEGIN
    UPDATE workers w
       SET lease_until = now() + make_interval(secs => p_ttl),
           heartbeat_at = now(),
           calls_per_second = p_calls
     WHERE w.id = p_worker AND w.state = 'live' AND w.lease_until > now()
    RETURNING w.lease_until INTO v_lease;
    IF v_lease IS NULL THEN
        RETURN QUERY SELECT false, v_out, false;
        RETURN;
    END IF;
    -- Pools in name order, so two heartbeats never wait on each other's locks in a cycle.
    FOR k IN SELECT i FROM generate_subscripts(p_pools, 1) AS i ORDER BY p_pools[i] LOOP
        v_pool := p_pools[k];
        INSERT INTO budget_pools (pool) VALUES (v_pool) ON CONFLICT DO NOTHING;
        PERFORM 1 FROM budget_pools b WHERE b.pool = v_pool FOR UPDATE;
        INSERT INTO budget_grants AS g (pool, worker, cap, want)
        VALUES (v_pool, p_worker, p_caps[k], p_wants[k])
        ON CONFLICT (pool, worker) DO UPDATE SET cap = excluded.cap, want = excluded.want;
        -- The most cautious live worker's capacity holds.
        SELECT min(g.cap) INTO v_cap
          FROM budget_grants g JOIN workers w ON w.id = g.worker
         WHERE g.pool = v_pool AND w.lease_until > now();
        -- Water-filling: the smallest wants are met first, the rest split evenly; integer
        -- shares that sum to at most the capacity.
        v_left := v_cap;
        v_target := 0;
        SELECT count(*) INTO v_n
          FROM budget_grants g JOIN workers w ON w.id = g.worker
         WHERE g.pool = v_pool AND w.state = 'live' AND w.lease_until > now() AND g.want > 0;
        FOR r IN SELECT g.worker, g.want
                   FROM budget_grants g JOIN workers w ON w.id = g.worker
                  WHERE g.pool = v_pool AND w.state = 'live' AND w.lease_until > now() AND g.want > 0
                  ORDER BY g.want, g.worker LOOP
            v_fair := v_left / v_n;
            v_mine := least(r.want, v_fair);
            IF r.worker = p_worker THEN
                v_target := v_mine;
            END IF;
            v_left := v_left - v_mine;
            v_n := v_n - 1;
        END LOOP;
        -- What every other unexpired lease still holds (a dead worker's until its lease runs
        -- out; a lowered share until its hold ends).
        SELECT coalesce(sum(CASE WHEN g.reserved_until > now() THEN greatest(g.reserved, g.granted)
                                 ELSE g.granted END), 0)
          INTO v_others
          FROM budget_grants g JOIN workers w ON w.id = g.worker
         WHERE g.pool = v_pool AND g.worker <> p_worker AND w.lease_until > now();
        v_mine := greatest(0, least(v_target, v_cap - v_others));
        UPDATE budget_grants g
           SET reserved = CASE WHEN v_mine < g.granted
                               THEN greatest(g.granted, CASE WHEN g.reserved_until > now() THEN g.reserved ELSE 0 END)
                               ELSE g.reserved END,
               reserved_until = CASE WHEN v_mine < g.granted
                                     THEN now() + make_interval(secs => p_hold)
                                     ELSE g.reserved_until END,
               target = v_target,
               granted = v_mine
         WHERE g.pool = v_pool AND g.worker = p_worker;
        v_out[k] := v_mine;
        IF v_mine < v_target THEN
            v_short := true;
        END IF;
    END LOOP;
    RETURN QUERY SELECT true, v_out, v_short;
END $$;
