// Command loadgen is the benchmark's load generator: keep-alive HTTPS connections with a client
// certificate, a different pre-generated ES256 DPoP proof (RFC 9449) on every request, and the
// server's CPU time read from /proc around the timed phase only.
//
// Standard library only (no modules from the net), so it builds offline with Debian's golang-go.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptrace"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Client is one OAuth client: its DPoP key (may be absent for Bearer/mTLS-bound tokens) and token.
type Client struct {
	D     string `json:"d"`
	X     string `json:"x"`
	Y     string `json:"y"`
	Token string `json:"token"`

	priv   *ecdsa.PrivateKey
	header string // base64url(JOSE header), the same for every proof of this client
	ath    string
}

type Result struct {
	Requests      int            `json:"requests"`
	Planned       int            `json:"planned"`
	Elapsed       float64        `json:"elapsed_s"`
	RPS           float64        `json:"rps"`
	Status        map[string]int `json:"status"`
	Errors        int            `json:"errors"`
	FirstError    string         `json:"first_error,omitempty"`
	P50ms         float64        `json:"p50_ms"`
	P90ms         float64        `json:"p90_ms"`
	P99ms         float64        `json:"p99_ms"`
	MaxMs         float64        `json:"max_ms"`
	ServerCPU     float64        `json:"server_cpu_s"`
	ServerCPUUs   float64        `json:"server_cpu_us_per_req"`
	ServerRSSKB   int64          `json:"server_rss_kb"`
	ServerPids    []int          `json:"server_pids"`
	SideCPU       float64        `json:"side_cpu_s"`
	SideCPUUs     float64        `json:"side_cpu_us_per_req"`
	LoadgenCPU    float64        `json:"loadgen_cpu_s"`
	LoadgenCPUUs  float64        `json:"loadgen_cpu_us_per_req"`
	WarmupRPS     float64        `json:"warmup_rps"`
	NewConns      int64          `json:"new_connections"`
	OtherCPU      float64        `json:"other_cpu_s"`
	PregenSeconds float64        `json:"pregen_s"`
	DistinctToks  int            `json:"distinct_tokens"`
	Concurrency   int            `json:"concurrency"`
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func die(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "loadgen: "+format+"\n", a...)
	os.Exit(2)
}

func loadClients(path string, wantKeys bool) []*Client {
	raw, err := os.ReadFile(path)
	if err != nil {
		die("read clients: %v", err)
	}
	var cs []*Client
	if err := json.Unmarshal(raw, &cs); err != nil {
		die("parse clients: %v", err)
	}
	for _, c := range cs {
		sum := sha256.Sum256([]byte(c.Token))
		c.ath = b64(sum[:])
		if !wantKeys {
			continue
		}
		d, err := base64.RawURLEncoding.DecodeString(c.D)
		if err != nil {
			die("client key: %v", err)
		}
		priv := new(ecdsa.PrivateKey)
		priv.Curve = elliptic.P256()
		priv.D = new(big.Int).SetBytes(d)
		priv.X, priv.Y = priv.Curve.ScalarBaseMult(d)
		c.priv = priv
		hdr := fmt.Sprintf(`{"typ":"dpop+jwt","alg":"ES256","jwk":{"kty":"EC","crv":"P-256","x":"%s","y":"%s"}}`,
			b64(pad32(priv.X.Bytes())), b64(pad32(priv.Y.Bytes())))
		c.header = b64([]byte(hdr))
	}
	return cs
}

func pad32(b []byte) []byte {
	if len(b) >= 32 {
		return b
	}
	out := make([]byte, 32)
	copy(out[32-len(b):], b)
	return out
}

// proof builds one compact JWS; iat is fresh (generated just before the timed phase).
func proof(c *Client, htm, htu string, iat int64) string {
	var jti [16]byte
	if _, err := rand.Read(jti[:]); err != nil {
		die("rand: %v", err)
	}
	payload := fmt.Sprintf(`{"jti":"%s","htm":"%s","htu":"%s","iat":%d,"ath":"%s"}`, b64(jti[:]), htm, htu, iat, c.ath)
	signing := c.header + "." + b64([]byte(payload))
	digest := sha256.Sum256([]byte(signing))
	r, s, err := ecdsa.Sign(rand.Reader, c.priv, digest[:])
	if err != nil {
		die("sign: %v", err)
	}
	sig := append(pad32(r.Bytes()), pad32(s.Bytes())...)
	return signing + "." + b64(sig)
}

// issuer goes into garbage tokens so they reach signature verification (and any negative cache).
var issuer string

// garbageToken is a JWT-shaped access token with a random jti and a random (invalid) signature.
func garbageToken(iss string) string {
	var jti [12]byte
	var sig [64]byte
	if _, err := rand.Read(jti[:]); err != nil {
		die("rand: %v", err)
	}
	if _, err := rand.Read(sig[:]); err != nil {
		die("rand: %v", err)
	}
	hdr := b64([]byte(`{"alg":"ES256","typ":"at+jwt","kid":"bench-as-1"}`))
	payload := fmt.Sprintf(`{"iss":"%s","sub":"x","aud":"https://api.bench.example","client_id":"x","iat":%d,"exp":%d,"jti":"%s"}`,
		iss, time.Now().Unix(), time.Now().Unix()+3600, b64(jti[:]))
	return hdr + "." + b64([]byte(payload)) + "." + b64(sig[:])
}

type reqHeaders struct {
	authz string
	dpop  string
}

// plan pre-generates every request's headers, in parallel on all cores, before anything is timed.
// In the many mix, request i uses client offset + i%distinct: each token is used about -uses
// times, spaced distinct requests apart, so its first use is cold and later ones can hit caches.
func plan(clients []*Client, n int, mix string, offset, distinct int, auth, scheme, htm, htu string) []reqHeaders {
	out := make([]reqHeaders, n)
	iat := time.Now().Unix()
	workers := runtime.NumCPU()
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < n; i += workers {
				c := clients[0]
				if mix == "many" {
					c = clients[(offset+i%distinct)%len(clients)]
				}
				h := reqHeaders{}
				switch auth {
				case "dpop":
					h.authz = scheme + " " + c.Token
					h.dpop = proof(c, htm, htu, iat)
				case "bearer":
					h.authz = "Bearer " + c.Token
				case "garbage":
					h.authz = "Bearer " + garbageToken(issuer)
				}
				out[i] = h
			}
		}(w)
	}
	wg.Wait()
	return out
}

const clkTck = 100.0 // USER_HZ on Linux

// descendants returns roots and all their descendant pids (gateway workers, nginx workers...).
func descendants(roots []int) []int {
	parent := map[int]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f := statFields(pid); f != nil {
			pp, _ := strconv.Atoi(f[1])
			parent[pid] = pp
		}
	}
	in := map[int]bool{}
	for _, r := range roots {
		in[r] = true
	}
	for changed := true; changed; {
		changed = false
		for pid, pp := range parent {
			if !in[pid] && in[pp] {
				in[pid] = true
				changed = true
			}
		}
	}
	var out []int
	for pid := range in {
		out = append(out, pid)
	}
	sort.Ints(out)
	return out
}

// statFields returns /proc/pid/stat fields after the comm field: [0]=state, [1]=ppid, ... [11]=utime, [12]=stime.
func statFields(pid int) []string {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(raw)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(s[i+1:])
}

func cpuSeconds(pids []int) float64 {
	var ticks float64
	for _, p := range pids {
		f := statFields(p)
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseFloat(f[11], 64)
		s, _ := strconv.ParseFloat(f[12], 64)
		ticks += u + s
	}
	return ticks / clkTck
}

func rssKB(pids []int) int64 {
	var total int64
	for _, p := range pids {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(raw), "\n") {
			if strings.HasPrefix(line, "VmRSS:") {
				v, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
				total += v
			}
		}
	}
	return total
}

// machineBusy is the CPU time all processes on the machine used (from /proc/stat), in seconds.
func machineBusy() float64 {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line := strings.SplitN(string(raw), "\n", 2)[0]
	f := strings.Fields(line)
	var busy float64
	for i, v := range f[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		x, _ := strconv.ParseFloat(v, 64)
		busy += x
	}
	return busy / clkTck
}

func selfCPU() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

type runStats struct {
	lat      [][]int64
	status   []map[int]int
	errs     int64
	firstErr atomic.Value
	newConns int64
	elapsed  time.Duration
}

// run sends reqs with c workers until all are sent or the deadline passes.
func run(client *http.Client, method, url string, reqs []reqHeaders, c int, limit time.Duration) *runStats {
	st := &runStats{lat: make([][]int64, c), status: make([]map[int]int, c)}
	var next int64 = -1
	// Counts connections opened during the run: with keep-alive it should stay at the concurrency.
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		if !info.Reused {
			atomic.AddInt64(&st.newConns, 1)
		}
	}}
	ctx := context.Background()
	start := time.Now()
	deadline := start.Add(limit)
	var wg sync.WaitGroup
	for w := 0; w < c; w++ {
		st.lat[w] = make([]int64, 0, len(reqs)/c+16)
		st.status[w] = map[int]int{}
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for {
				i := atomic.AddInt64(&next, 1)
				if int(i) >= len(reqs) || time.Now().After(deadline) {
					return
				}
				req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), method, url, nil)
				h := reqs[i]
				if h.authz != "" {
					req.Header["Authorization"] = []string{h.authz}
				}
				if h.dpop != "" {
					req.Header["Dpop"] = []string{h.dpop}
				}
				t0 := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					atomic.AddInt64(&st.errs, 1)
					st.firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				st.lat[w] = append(st.lat[w], int64(time.Since(t0)))
				st.status[w][resp.StatusCode]++
			}
		}(w)
	}
	wg.Wait()
	st.elapsed = time.Since(start)
	return st
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "soak" {
		soakMain(os.Args[2:])
		return
	}
	url := flag.String("url", "", "target URL (no query)")
	method := flag.String("method", "GET", "HTTP method")
	conc := flag.Int("c", 16, "concurrency (= keep-alive connections)")
	duration := flag.Duration("duration", 5*time.Second, "timed phase limit")
	warmup := flag.Duration("warmup", time.Second, "warm-up phase (opens connections, not measured)")
	maxReq := flag.Int("max", 300000, "upper bound on timed requests")
	certF := flag.String("cert", "", "client certificate PEM")
	keyF := flag.String("key", "", "client key PEM")
	caF := flag.String("ca", "", "CA bundle PEM for the server certificate")
	clientsF := flag.String("clients", "", "clients JSON")
	mix := flag.String("mix", "hot", "hot: one token; many: round-robin over all clients' tokens")
	uses := flag.Int("uses", 3, "many mix: intended uses per token within the timed phase")
	offset := flag.Int("offset", 0, "many mix: first client index (vary per round so tokens start cold)")
	span := flag.Int("span", 1<<30, "many mix: at most this many distinct clients")
	auth := flag.String("auth", "dpop", "dpop | bearer | garbage (random invalid JWTs) | none")
	flag.StringVar(&issuer, "issuer", "https://as.example", "iss of -auth garbage tokens")
	scheme := flag.String("scheme", "DPoP", "Authorization scheme used with -auth dpop")
	pidsF := flag.String("pids", "", "comma-separated root pids of the server under test")
	sidePidsF := flag.String("side-pids", "", "root pids measured apart (e.g. the Envoy in front of the gateway)")
	readyF := flag.String("ready-file", "", "touch this file when the timed phase starts (for profilers)")
	outF := flag.String("out", "", "write the JSON result here (default stdout)")
	flag.Parse()
	if *url == "" {
		die("-url is required")
	}

	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if *certF != "" {
		pair, err := tls.LoadX509KeyPair(*certF, *keyF)
		if err != nil {
			die("client cert: %v", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	if *caF != "" {
		pem, err := os.ReadFile(*caF)
		if err != nil {
			die("ca: %v", err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		cfg.RootCAs = pool
	}
	tr := &http.Transport{
		TLSClientConfig:     cfg,
		MaxIdleConns:        *conc * 2,
		MaxIdleConnsPerHost: *conc * 2,
		MaxConnsPerHost:     *conc,
		DisableCompression:  true,
		IdleConnTimeout:     120 * time.Second,
	}
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}

	var clients []*Client
	if *auth != "none" && *auth != "garbage" {
		clients = loadClients(*clientsF, *auth == "dpop")
	} else {
		clients = []*Client{{}}
	}
	htu := *url
	if i := strings.IndexByte(htu, '?'); i >= 0 {
		htu = htu[:i]
	}

	// Warm-up: connections and server caches for the hot token; also estimates the rate.
	wN := 200 * *conc
	wreqs := plan(clients, wN, "hot", 0, 1, *auth, *scheme, *method, htu)
	ws := run(client, *method, *url, wreqs, *conc, *warmup)
	wDone := 0
	for _, l := range ws.lat {
		wDone += len(l)
	}
	wRPS := float64(wDone) / ws.elapsed.Seconds()
	if wDone == 0 {
		first, _ := ws.firstErr.Load().(string)
		die("warm-up got no responses: %s", first)
	}

	// Size the timed phase so the proofs cannot run out before the deadline at twice the warm-up rate.
	n := int(wRPS*duration.Seconds()*2.0) + 4**conc
	if n > *maxReq {
		n = *maxReq
	}
	distinct := int(wRPS * duration.Seconds() / float64(*uses))
	if distinct > *span {
		distinct = *span
	}
	if distinct > len(clients) {
		distinct = len(clients)
	}
	if distinct < 1 {
		distinct = 1
	}
	t0 := time.Now()
	reqs := plan(clients, n, *mix, *offset, distinct, *auth, *scheme, *method, htu)
	pregen := time.Since(t0).Seconds()
	runtime.GC()

	var roots []int
	for _, p := range strings.Split(*pidsF, ",") {
		if v, err := strconv.Atoi(strings.TrimSpace(p)); err == nil {
			roots = append(roots, v)
		}
	}
	pids := descendants(roots)
	var sideRoots []int
	for _, p := range strings.Split(*sidePidsF, ",") {
		if v, err := strconv.Atoi(strings.TrimSpace(p)); err == nil {
			sideRoots = append(sideRoots, v)
		}
	}
	side := descendants(sideRoots)
	side0 := cpuSeconds(side)
	cpu0 := cpuSeconds(pids)
	self0 := selfCPU()
	busy0 := machineBusy()
	if *readyF != "" {
		_ = os.WriteFile(*readyF, []byte("timed\n"), 0o644)
	}
	st := run(client, *method, *url, reqs, *conc, *duration)
	cpu1 := cpuSeconds(pids)
	side1 := cpuSeconds(side)
	self1 := selfCPU()
	busy1 := machineBusy()
	rss := rssKB(pids)

	var all []int64
	status := map[string]int{}
	for w := range st.lat {
		all = append(all, st.lat[w]...)
		for code, k := range st.status[w] {
			status[strconv.Itoa(code)] += k
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	pct := func(p float64) float64 {
		if len(all) == 0 {
			return 0
		}
		i := int(p * float64(len(all)-1))
		return float64(all[i]) / 1e6
	}
	done := len(all)
	res := Result{
		Requests: done, Planned: n, Elapsed: st.elapsed.Seconds(), Status: status, Errors: int(st.errs),
		P50ms: pct(0.50), P90ms: pct(0.90), P99ms: pct(0.99), MaxMs: pct(1.0),
		ServerCPU: cpu1 - cpu0, ServerRSSKB: rss, ServerPids: pids, SideCPU: side1 - side0,
		LoadgenCPU: self1 - self0, NewConns: st.newConns, WarmupRPS: wRPS, PregenSeconds: pregen, Concurrency: *conc,
	}
	// CPU used by everything else on the machine during the phase (other jobs skew the figures).
	res.OtherCPU = (busy1 - busy0) - res.ServerCPU - res.LoadgenCPU - res.SideCPU
	if first, ok := st.firstErr.Load().(string); ok {
		res.FirstError = first
	}
	if done > 0 {
		res.RPS = float64(done) / st.elapsed.Seconds()
		res.ServerCPUUs = res.ServerCPU / float64(done) * 1e6
		res.LoadgenCPUUs = res.LoadgenCPU / float64(done) * 1e6
		res.SideCPUUs = res.SideCPU / float64(done) * 1e6
	}
	if *mix == "many" {
		res.DistinctToks = distinct
		if done < distinct {
			res.DistinctToks = done
		}
	} else {
		res.DistinctToks = 1
	}
	enc, _ := json.MarshalIndent(res, "", "  ")
	if *outF != "" {
		if err := os.WriteFile(*outF, enc, 0o644); err != nil {
			die("write: %v", err)
		}
	} else {
		fmt.Println(string(enc))
	}
}
