package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"sync"
	"time"
)

type OTP struct {
	Key     string
	Created time.Time
}

// RetentionMap holds OTPs until used or older than the retention period.
// The tutorial's is a bare map; logins and upgrades run on many goroutines,
// so the port guards it with a mutex.
type RetentionMap struct {
	sync.Mutex
	otps map[string]OTP
}

func NewRetentionMap(ctx context.Context, retentionPeriod time.Duration) *RetentionMap {
	rm := &RetentionMap{otps: make(map[string]OTP)}
	go rm.Retention(ctx, retentionPeriod)
	return rm
}

// NewOTP issues a fresh OTP (the tutorial uses a UUID; 128 random bits in hex
// avoid a second package).
func (rm *RetentionMap) NewOTP() OTP {
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		panic(err)
	}
	o := OTP{Key: hex.EncodeToString(raw[:]), Created: time.Now()}
	rm.Lock()
	rm.otps[o.Key] = o
	rm.Unlock()
	return o
}

// VerifyOTP consumes an OTP: true once, then false.
func (rm *RetentionMap) VerifyOTP(otp string) bool {
	rm.Lock()
	defer rm.Unlock()
	if _, ok := rm.otps[otp]; !ok {
		return false
	}
	delete(rm.otps, otp)
	return true
}

// Retention drops expired OTPs every 400 ms, as in the tutorial.
func (rm *RetentionMap) Retention(ctx context.Context, retentionPeriod time.Duration) {
	ticker := time.NewTicker(400 * time.Millisecond)
	defer ticker.Stop()
	for {
		select {
		case <-ticker.C:
			rm.Lock()
			for _, otp := range rm.otps {
				if otp.Created.Add(retentionPeriod).Before(time.Now()) {
					delete(rm.otps, otp.Key)
				}
			}
			rm.Unlock()
		case <-ctx.Done():
			return
		}
	}
}
