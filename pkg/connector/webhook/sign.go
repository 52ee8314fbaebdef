package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Signer signs requests the Standard Webhooks way
// (https://www.standardwebhooks.com): a webhook-id header (the same on
// every retry of one event), a webhook-timestamp header (Unix seconds,
// fresh on each attempt) and a webhook-signature header holding
// "v1,<base64 HMAC-SHA256 of id.timestamp.body>" once per secret, space
// separated, so a receiver rotating its secret accepts either. It is safe
// for concurrent use.
type Signer struct {
	keys [][]byte
}

// NewSigner takes the secrets, each "whsec_" followed by base64 (as
// Standard Webhooks libraries generate them) or the base64 alone.
func NewSigner(secrets []string) (*Signer, error) {
	s := &Signer{}
	for i, sec := range secrets {
		key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(sec, "whsec_"))
		if err != nil || len(key) == 0 {
			// The secret itself never goes into an error.
			return nil, fmt.Errorf("signing secret %d is not whsec_<base64> (a Standard Webhooks secret)", i+1)
		}
		s.keys = append(s.keys, key)
	}
	return s, nil
}

// Signature returns the webhook-signature header's value for one message.
func (s *Signer) Signature(id string, ts time.Time, body []byte) string {
	unix := strconv.FormatInt(ts.Unix(), 10)
	sigs := make([]string, len(s.keys))
	for i, key := range s.keys {
		mac := hmac.New(sha256.New, key)
		mac.Write([]byte(id))
		mac.Write([]byte{'.'})
		mac.Write([]byte(unix))
		mac.Write([]byte{'.'})
		mac.Write(body)
		sigs[i] = "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
	}
	return strings.Join(sigs, " ")
}

// Sign sets the three Standard Webhooks headers on h.
func (s *Signer) Sign(h http.Header, id string, ts time.Time, body []byte) {
	h.Set("webhook-id", id)
	h.Set("webhook-timestamp", strconv.FormatInt(ts.Unix(), 10))
	h.Set("webhook-signature", s.Signature(id, ts, body))
}
