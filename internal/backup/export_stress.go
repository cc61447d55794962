package backup

import "time"

// SetLockTimingForTests is for tests only (test/stress): it shortens the
// lock timing of this process so that leases lapse, heartbeats matter and
// a killed backup's lock goes stale within seconds instead of minutes.
// heartbeat becomes heartbeatEvery, gcWaitStep and packSaveEvery; live
// becomes lockLive and maxSkew. Call it before any Repo work starts; the
// returned function restores the previous values. Production code never
// calls it.
func SetLockTimingForTests(heartbeat, live time.Duration) (restore func()) {
	hb, ll, ms, gw, ps := heartbeatEvery, lockLive, maxSkew, gcWaitStep, packSaveEvery
	heartbeatEvery, lockLive, maxSkew, gcWaitStep, packSaveEvery = heartbeat, live, live, heartbeat, heartbeat
	return func() {
		heartbeatEvery, lockLive, maxSkew, gcWaitStep, packSaveEvery = hb, ll, ms, gw, ps
	}
}
