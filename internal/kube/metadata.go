package kube

import (
	"bufio"
	"encoding/json"
	"io"
	"net/url"
	"strconv"

	"github.com/cairn-csi/cairn/internal/model"
)

// Changed-block metadata from a node (docs/FORMAT.md#changed-block-metadata-from-a-node):
// the controller asks the agent of the target snapshot's node, which
// streams JSON lines. Both ends of the format are here.

const (
	// MetadataContentType is the stream's media type, version 1.
	MetadataContentType = "application/vnd.cairn.metadata.v1+jsonl"
	// MaxMetadataLine bounds one line of the stream.
	MaxMetadataLine = 1 << 20
	// MetadataResource and MetadataSubresource are what the agent's
	// SubjectAccessReview asks to "get" in the API group cairn.csi.dev.
	MetadataResource    = "snapshots"
	MetadataSubresource = "metadata"
)

// AgentAudience is the audience of the controller's token for node's
// agent: one per node, so an agent cannot replay a token it was sent to
// another node's agent.
func AgentAudience(node string) string { return "cairn.csi.dev/agent/" + node }

// MetadataPath is the request path and query for q.
func MetadataPath(q model.MetadataQuery) string {
	v := url.Values{}
	if q.BaseSnapshotID != "" {
		v.Set("base", q.BaseSnapshotID)
	}
	if q.StartingOffset != 0 {
		v.Set("start", strconv.FormatInt(q.StartingOffset, 10))
	}
	if q.MaxResults != 0 {
		v.Set("max", strconv.FormatInt(int64(q.MaxResults), 10))
	}
	p := "/v1/snapshots/" + url.PathEscape(q.SnapshotID) + "/metadata"
	if len(v) > 0 {
		p += "?" + v.Encode()
	}
	return p
}

// ParseMetadataQuery reads a request's query for snapshot id; a malformed
// number is ErrInvalidArgument naming the parameter.
func ParseMetadataQuery(id string, v url.Values) (model.MetadataQuery, error) {
	q := model.MetadataQuery{SnapshotID: id, BaseSnapshotID: v.Get("base")}
	if s := v.Get("start"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return q, model.Errorf(model.ErrInvalidArgument, "start %q: not a decimal offset", s)
		}
		q.StartingOffset = n
	}
	if s := v.Get("max"); s != "" {
		n, err := strconv.ParseInt(s, 10, 32)
		if err != nil || n < 0 {
			return q, model.Errorf(model.ErrInvalidArgument, "max %q: not a count from 0", s)
		}
		q.MaxResults = int32(n)
	}
	return q, nil
}

// metadataLine is one line of the stream.
type metadataLine struct {
	CapacityBytes *int64     `json:"capacityBytes,omitempty"`
	Ranges        [][2]int64 `json:"ranges,omitempty"`
	Error         string     `json:"error,omitempty"`
	Reason        string     `json:"reason,omitempty"`
	Done          bool       `json:"done,omitempty"`
}

// MetadataWriter writes a stream: Chunk for each chunk, then End once.
type MetadataWriter struct {
	enc   *json.Encoder
	flush func()
}

// NewMetadataWriter writes to w, calling flush (may be nil) after each line.
func NewMetadataWriter(w io.Writer, flush func()) *MetadataWriter {
	if flush == nil {
		flush = func() {}
	}
	return &MetadataWriter{enc: json.NewEncoder(w), flush: flush}
}

// Chunk writes one chunk.
func (m *MetadataWriter) Chunk(c model.MetadataChunk) error {
	capacity := c.CapacityBytes
	l := metadataLine{CapacityBytes: &capacity, Ranges: make([][2]int64, len(c.Ranges))}
	for i, r := range c.Ranges {
		l.Ranges[i] = [2]int64{r.Offset, r.Length}
	}
	return m.write(l)
}

// End ends the stream: done when err is nil, else the error and its reason.
func (m *MetadataWriter) End(err error) error {
	if err == nil {
		return m.write(metadataLine{Done: true})
	}
	return m.write(metadataLine{Error: err.Error(), Reason: model.Reason(err)})
}

func (m *MetadataWriter) write(l metadataLine) error {
	if err := m.enc.Encode(l); err != nil {
		return err
	}
	m.flush()
	return nil
}

// ReadMetadata reads a stream from r, passing each chunk to emit. An error
// line is an error of its reason's kind; a stream that ends without done,
// a line too long or malformed, done before any chunk or carrying data,
// an empty chunk after the first, is ErrUnavailable (never a short or
// endless answer).
// The chunks' contents are the caller's to check.
func ReadMetadata(r io.Reader, emit func(model.MetadataChunk) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), MaxMetadataLine+1)
	chunks := 0
	for sc.Scan() {
		var l metadataLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return model.Errorf(model.ErrUnavailable, "metadata stream: malformed line: %v", err)
		}
		switch {
		case l.Done && (l.CapacityBytes != nil || l.Ranges != nil || l.Error != ""):
			return model.Errorf(model.ErrUnavailable, "metadata stream: a done line that carries more")
		case l.Done && chunks == 0:
			// Every stream has at least one chunk (the capacity).
			return model.Errorf(model.ErrUnavailable, "metadata stream: done before any chunk")
		case l.Done:
			return nil
		case l.Error != "":
			return model.FromReason(l.Reason, l.Error)
		case l.CapacityBytes == nil:
			return model.Errorf(model.ErrUnavailable, "metadata stream: a line with neither capacityBytes, error nor done")
		case chunks > 0 && len(l.Ranges) == 0:
			// Only a stream without ranges has an empty chunk, its only one.
			return model.Errorf(model.ErrUnavailable, "metadata stream: an empty chunk after the first")
		}
		chunks++
		c := model.MetadataChunk{CapacityBytes: *l.CapacityBytes, Ranges: make([]model.BlockRange, len(l.Ranges))}
		for i, p := range l.Ranges {
			c.Ranges[i] = model.BlockRange{Offset: p[0], Length: p[1]}
		}
		if err := emit(c); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return model.Errorf(model.ErrUnavailable, "metadata stream broken off: %v", err)
	}
	return model.Errorf(model.ErrUnavailable, "metadata stream ended without its done line (the node's agent stopped?)")
}
