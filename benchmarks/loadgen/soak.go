// Soak mode (`loadgen soak ...`, driven by benchmarks/soak30.py): an open-loop, paced mix of
// DPoP-bound requests (a fresh proof signed per request, round-robin over many client keys) and
// mTLS-bound requests (one keep-alive pool per client certificate), plus a trickle of replayed
// proofs (proofs the gateway already accepted, sent again). One JSON line per window goes to -out.
//
// Pacing is open-loop: request i is due at start + i/rate; when the server falls behind, the
// lag is reported (the achieved rate then shows the capacity) instead of silently slowing down.
// A request more than -max-lag late is skipped and counted: the backlog stays bounded, so a
// stretch of contention on a shared machine does not turn the rest of the run into an overload.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	mrand "math/rand"
	"net/http"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

type mtlsClient struct {
	Token string `json:"token"`
	Cert  string `json:"cert"`
	Key   string `json:"key"`

	http *http.Client
}

// kindStats is one request kind's counts in a window.
type kindStats struct {
	Status map[string]int `json:"status"`
	Errors int            `json:"errors"`
}

type window struct {
	mu       sync.Mutex
	T0       float64               `json:"t0_s"`
	T1       float64               `json:"t1_s"`
	Sent     int                   `json:"sent"`
	Skipped  int                   `json:"skipped"`
	Kinds    map[string]*kindStats `json:"kinds"`
	Lat      []int64               `json:"-"`
	Hist     map[string]int        `json:"hist"` // log-bucket (50 per decade of µs) -> count
	P50ms    float64               `json:"p50_ms"`
	P99ms    float64               `json:"p99_ms"`
	MaxMs    float64               `json:"max_ms"`
	MaxLagMs float64               `json:"max_lag_ms"`
	FirstErr string                `json:"first_error,omitempty"`
	Final    bool                  `json:"final,omitempty"`
	closed   bool
}

func newWindow(t0 float64) *window {
	return &window{T0: t0, Kinds: map[string]*kindStats{}, Hist: map[string]int{}}
}

// record counts one response; false when the window was already written out (use the next one).
func (w *window) record(kind string, status int, err error, lat time.Duration, lag time.Duration) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return false
	}
	k := w.Kinds[kind]
	if k == nil {
		k = &kindStats{Status: map[string]int{}}
		w.Kinds[kind] = k
	}
	if ms := float64(lag) / 1e6; ms > w.MaxLagMs {
		w.MaxLagMs = ms
	}
	if err != nil {
		k.Errors++
		if w.FirstErr == "" {
			w.FirstErr = err.Error()
		}
		return true
	}
	k.Status[strconv.Itoa(status)]++
	if kind == "replay" {
		return true // replays are refused early: their latency is not the service's
	}
	w.Lat = append(w.Lat, int64(lat))
	us := float64(lat) / 1e3
	if us < 1 {
		us = 1
	}
	w.Hist[strconv.Itoa(int(math.Floor(math.Log10(us)*50)))]++
	return true
}

func (w *window) finish(t1 float64) {
	w.closed = true
	w.T1 = t1
	sort.Slice(w.Lat, func(i, j int) bool { return w.Lat[i] < w.Lat[j] })
	pct := func(p float64) float64 {
		if len(w.Lat) == 0 {
			return 0
		}
		return float64(w.Lat[int(p*float64(len(w.Lat)-1))]) / 1e6
	}
	w.P50ms, w.P99ms, w.MaxMs = pct(0.50), pct(0.99), pct(1.0)
}

// replayRing holds recently accepted DPoP requests; a replay sends one of them again.
type replayRing struct {
	mu    sync.Mutex
	items []reqHeaders
	next  int
}

func (r *replayRing) add(h reqHeaders) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.items) < 256 {
		r.items = append(r.items, h)
		return
	}
	r.items[r.next] = h
	r.next = (r.next + 1) % len(r.items)
}

func (r *replayRing) pick(rng *mrand.Rand) (reqHeaders, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.items) == 0 {
		return reqHeaders{}, false
	}
	return r.items[rng.Intn(len(r.items))], true
}

func tlsConfig(caF, certF, keyF string) *tls.Config {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	pem, err := os.ReadFile(caF)
	if err != nil {
		die("ca: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	cfg.RootCAs = pool
	if certF != "" {
		pair, err := tls.LoadX509KeyPair(certF, keyF)
		if err != nil {
			die("client cert: %v", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg
}

func httpClient(cfg *tls.Config, conns int) *http.Client {
	tr := &http.Transport{
		TLSClientConfig:     cfg,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		MaxConnsPerHost:     conns,
		DisableCompression:  true,
		IdleConnTimeout:     120 * time.Second,
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

func soakMain(argv []string) {
	fs := flag.NewFlagSet("soak", flag.ExitOnError)
	base := fs.String("base", "", "https://host:port of the gateway")
	dpopPath := fs.String("dpop-path", "/dpop/accounts", "path of the DPoP route")
	mtlsPath := fs.String("mtls-path", "/mtls/accounts", "path of the mTLS route")
	dpopF := fs.String("dpop-clients", "", "JSON [{d,x,y,token}]: DPoP keys and their tokens")
	mtlsF := fs.String("mtls-clients", "", "JSON [{token,cert,key}]: mTLS clients (may be empty)")
	caF := fs.String("ca", "", "CA bundle for the gateway's certificate")
	rate := fs.Float64("rate", 100, "requests per second, all kinds together")
	mtlsShare := fs.Float64("mtls-share", 0.3, "fraction of requests on the mTLS route")
	replayShare := fs.Float64("replay-share", 0.01, "fraction of requests that replay an accepted proof")
	duration := fs.Duration("duration", time.Minute, "how long to send")
	win := fs.Duration("window", 10*time.Second, "reporting window")
	conc := fs.Int("c", 128, "most requests in flight")
	dpopConns := fs.Int("dpop-conns", 32, "keep-alive connections for the DPoP route")
	mtlsConns := fs.Int("mtls-conns", 4, "keep-alive connections per mTLS client")
	maxLag := fs.Duration("max-lag", time.Second, "skip (and count) a request this late; 0: never skip")
	outF := fs.String("out", "", "JSON lines, one per window (default stdout)")
	_ = fs.Parse(argv)
	if *base == "" || *dpopF == "" || *caF == "" {
		die("soak: -base, -dpop-clients and -ca are required")
	}
	dpopClients := loadClients(*dpopF, true)
	var mtls []*mtlsClient
	if *mtlsF != "" {
		raw, err := os.ReadFile(*mtlsF)
		if err != nil {
			die("mtls clients: %v", err)
		}
		if err := json.Unmarshal(raw, &mtls); err != nil {
			die("mtls clients: %v", err)
		}
		for _, m := range mtls {
			m.http = httpClient(tlsConfig(*caF, m.Cert, m.Key), *mtlsConns)
		}
	}
	if len(mtls) == 0 {
		*mtlsShare = 0
	}
	dpopHTTP := httpClient(tlsConfig(*caF, "", ""), *dpopConns)
	dpopURL, mtlsURL := *base+*dpopPath, *base+*mtlsPath

	out := os.Stdout
	if *outF != "" {
		f, err := os.Create(*outF)
		if err != nil {
			die("out: %v", err)
		}
		defer f.Close()
		out = f
	}
	enc := json.NewEncoder(out)

	start := time.Now()
	interval := time.Duration(float64(time.Second) / *rate)
	deadline := start.Add(*duration)
	var next int64 = -1
	var cur atomic.Pointer[window]
	cur.Store(newWindow(0))
	ring := &replayRing{}
	var sent, skipped int64

	// Windows close on a ticker; a request is counted in the window its response arrives in.
	stop := make(chan struct{})
	var wdone sync.WaitGroup
	wdone.Add(1)
	go func() {
		defer wdone.Done()
		tick := time.NewTicker(*win)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				now := time.Since(start).Seconds()
				old := cur.Swap(newWindow(now))
				old.mu.Lock()
				old.Sent = int(atomic.SwapInt64(&sent, 0))
				old.Skipped = int(atomic.SwapInt64(&skipped, 0))
				old.finish(now)
				_ = enc.Encode(old)
				old.mu.Unlock()
			case <-stop:
				return
			}
		}
	}()

	var wg sync.WaitGroup
	for w := 0; w < *conc; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := mrand.New(mrand.NewSource(time.Now().UnixNano() + int64(w)*7919))
			for {
				i := atomic.AddInt64(&next, 1)
				due := start.Add(time.Duration(i) * interval)
				if due.After(deadline) {
					return
				}
				if d := time.Until(due); d > 0 {
					time.Sleep(d)
				}
				lag := time.Since(due)
				if *maxLag > 0 && lag > *maxLag {
					atomic.AddInt64(&skipped, 1)
					continue
				}
				kind, url := "dpop", dpopURL
				var h reqHeaders
				var httpc *http.Client
				if r := rng.Float64(); r < *replayShare {
					// Nothing accepted yet: a fresh DPoP request instead.
					if old, ok := ring.pick(rng); ok {
						kind, h, httpc = "replay", old, dpopHTTP
					}
				} else if r < *replayShare+*mtlsShare {
					m := mtls[int(i)%len(mtls)]
					kind, url, httpc = "mtls", mtlsURL, m.http
					h = reqHeaders{authz: "Bearer " + m.Token}
				}
				if httpc == nil {
					c := dpopClients[int(i)%len(dpopClients)]
					h = reqHeaders{authz: "DPoP " + c.Token, dpop: proof(c, "GET", dpopURL, time.Now().Unix())}
					httpc = dpopHTTP
				}
				req, _ := http.NewRequest("GET", url, nil)
				req.Header["Authorization"] = []string{h.authz}
				if h.dpop != "" {
					req.Header["Dpop"] = []string{h.dpop}
				}
				atomic.AddInt64(&sent, 1)
				t0 := time.Now()
				resp, err := httpc.Do(req)
				status := 0
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					status = resp.StatusCode
					if kind == "dpop" && status == 200 {
						ring.add(h)
					}
				}
				lat := time.Since(t0)
				for !cur.Load().record(kind, status, err, lat, lag) {
				}
			}
		}(w)
	}
	wg.Wait()
	close(stop)
	wdone.Wait()
	last := cur.Load()
	last.mu.Lock()
	last.Sent = int(atomic.SwapInt64(&sent, 0))
	last.Skipped = int(atomic.SwapInt64(&skipped, 0))
	last.finish(time.Since(start).Seconds())
	last.Final = true
	_ = enc.Encode(last)
	last.mu.Unlock()
	fmt.Fprintf(os.Stderr, "soak: done after %.1fs\n", time.Since(start).Seconds())
}
