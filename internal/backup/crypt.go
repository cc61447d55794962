package backup

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/zeebo/blake3"
)

// Encrypted stores (docs/FORMAT.md, "Encrypted stores (format 2)").
const (
	// MasterKeySize is the length of a target's master key.
	MasterKeySize = 32

	encVersion   = 1
	aeadName     = "aes-256-gcm"
	kdfName      = "hkdf-sha256"
	nonceSize    = 12
	tagSize      = 16
	sealOverhead = tagSize + nonceSize
	objectMagic  = "CAIRNEN1"

	infoKEK      = "cairn/v2/kek"
	infoKeyCheck = "cairn/v2/key-check"
	infoBlob     = "cairn/v2/blob"
	infoObject   = "cairn/v2/object"
	infoDedup    = "cairn/v2/dedup"
	adDataKey    = "cairn/v2/data-key"
	adBlob       = "cairn/v2/blob/"
	adObject     = "cairn/v2/object/"
)

// ErrKey is a missing, wrong or unwanted master key: the store and the
// key given do not go together.
var ErrKey = errors.New("backup store key")

// ErrConfigChanged is a store whose configuration changed under an open
// Repo: open it again.
var ErrConfigChanged = errors.New("backup store configuration changed")

// EncryptionConfig is the encryption section of cairn-backup.json: what
// a reader needs to check a master key and unwrap the data key.
type EncryptionConfig struct {
	Version   int       `json:"version"`
	AEAD      string    `json:"aead"`
	KDF       string    `json:"kdf"`
	Salt      string    `json:"salt"`
	KeyCheck  string    `json:"keyCheck"`
	DataKey   string    `json:"dataKey"`
	RotatedAt time.Time `json:"rotatedAt,omitzero"`
}

// keyring holds an open encrypted store's keys.
type keyring struct {
	blob, object cipher.AEAD
	dedup        []byte
}

func derive(secret, salt []byte, info string) []byte {
	k, err := hkdf.Key(sha256.New, secret, salt, info, 32)
	if err != nil {
		panic(err) // only for lengths hkdf cannot give
	}
	return k
}

func newAEAD(key []byte) cipher.AEAD {
	b, err := aes.NewCipher(key)
	if err != nil {
		panic(err) // the key is always 32 bytes
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		panic(err)
	}
	return g
}

// seal encrypts plain in place (dst = plain[:0] with room for
// sealOverhead more bytes) and appends the nonce: ciphertext ‖ tag ‖
// nonce.
func seal(a cipher.AEAD, plain []byte, ad string) []byte {
	var nonce [nonceSize]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	out := a.Seal(plain[:0], nonce[:], plain, []byte(ad))
	return append(out, nonce[:]...)
}

// open undoes seal in place.
func open(a cipher.AEAD, sealed []byte, ad string) ([]byte, error) {
	if len(sealed) < sealOverhead {
		return nil, errors.New("too short to be sealed")
	}
	body, nonce := sealed[:len(sealed)-nonceSize], sealed[len(sealed)-nonceSize:]
	out, err := a.Open(body[:0], nonce, body, []byte(ad))
	if err != nil {
		return nil, errors.New("authentication failed: damaged, or not sealed with this store's key")
	}
	return out, nil
}

// CheckMasterKey checks a master key's length, the one rule on its bytes.
func CheckMasterKey(master []byte) error {
	if len(master) != MasterKeySize {
		return fmt.Errorf("%w: a master key is %d bytes, this one %d", ErrKey, MasterKeySize, len(master))
	}
	return nil
}

// newEncryption makes the encryption section and keys of a new store.
func newEncryption(master []byte) (*EncryptionConfig, *keyring, error) {
	if err := CheckMasterKey(master); err != nil {
		return nil, nil, err
	}
	salt, dek := make([]byte, 32), make([]byte, 32)
	rand.Read(salt)
	rand.Read(dek)
	c := &EncryptionConfig{Version: encVersion, AEAD: aeadName, KDF: kdfName, Salt: b64(salt)}
	c.wrap(master, salt, dek)
	return c, newKeyring(dek), nil
}

func (c *EncryptionConfig) wrap(master, salt, dek []byte) {
	c.KeyCheck = b64(derive(master, salt, infoKeyCheck))
	c.DataKey = b64(seal(newAEAD(derive(master, salt, infoKEK)), append(make([]byte, 0, len(dek)+sealOverhead), dek...), adDataKey))
}

func newKeyring(dek []byte) *keyring {
	return &keyring{blob: newAEAD(derive(dek, nil, infoBlob)), object: newAEAD(derive(dek, nil, infoObject)), dedup: derive(dek, nil, infoDedup)}
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// validate checks the section's shape (it is store input).
func (c *EncryptionConfig) validate() error {
	if c.Version != encVersion || c.AEAD != aeadName || c.KDF != kdfName {
		return fmt.Errorf("%w: encryption version %d, %q, %q", ErrUnsupported, c.Version, c.AEAD, c.KDF)
	}
	for _, f := range []struct {
		name, v string
		n       int
	}{{"salt", c.Salt, 32}, {"keyCheck", c.KeyCheck, 32}, {"dataKey", c.DataKey, 32 + sealOverhead}} {
		b, err := base64.StdEncoding.DecodeString(f.v)
		if err != nil || len(b) != f.n {
			return corruptf("%s: encryption.%s is not %d bytes of base64", configKey, f.name, f.n)
		}
	}
	return nil
}

// open checks master against the key check and unwraps the data key.
func (c *EncryptionConfig) open(master []byte) (*keyring, error) {
	dek, err := c.dataKey(master)
	if err != nil {
		return nil, err
	}
	return newKeyring(dek), nil
}

func (c *EncryptionConfig) dataKey(master []byte) ([]byte, error) {
	if err := CheckMasterKey(master); err != nil {
		return nil, err
	}
	salt, _ := base64.StdEncoding.DecodeString(c.Salt)
	check, _ := base64.StdEncoding.DecodeString(c.KeyCheck)
	if subtle.ConstantTimeCompare(derive(master, salt, infoKeyCheck), check) != 1 {
		return nil, fmt.Errorf("%w: the key is not this store's (key check failed)", ErrKey)
	}
	wrapped, _ := base64.StdEncoding.DecodeString(c.DataKey)
	dek, err := open(newAEAD(derive(master, salt, infoKEK)), wrapped, adDataKey)
	if err != nil {
		return nil, corruptf("%s: the data key does not unwrap with a key that passed the key check: %v", configKey, err)
	}
	return dek, nil
}

// rewrapped is c with its data key wrapped by next instead of master.
func (c *EncryptionConfig) rewrapped(master, next []byte) (*EncryptionConfig, error) {
	dek, err := c.dataKey(master)
	if err != nil {
		return nil, err
	}
	if err := CheckMasterKey(next); err != nil {
		return nil, err
	}
	out := *c
	salt, _ := base64.StdEncoding.DecodeString(c.Salt)
	out.wrap(next, salt, dek)
	out.RotatedAt = time.Now().UTC()
	return &out, nil
}

// sameAs says whether two keyrings hold the same keys.
func (k *keyring) sameAs(o *keyring) bool {
	return k != nil && o != nil && subtle.ConstantTimeCompare(k.dedup, o.dedup) == 1
}

// hash is a block's identity: BLAKE3-256, keyed with the dedup key in an
// encrypted store.
func (k *keyring) hash(b []byte) string {
	if k == nil {
		return hashBlock(b)
	}
	h, _ := blake3.NewKeyed(k.dedup)
	h.Write(b)
	var sum [32]byte
	h.Sum(sum[:0])
	return hex.EncodeToString(sum[:])
}

// sealBlob encrypts a stored block in place (blob needs sealOverhead
// bytes of spare capacity); a plain store's blob is returned as is.
func (k *keyring) sealBlob(hash string, blob []byte) []byte {
	if k == nil {
		return blob
	}
	return seal(k.blob, blob, adBlob+hash)
}

// openBlob undoes sealBlob in place.
func (k *keyring) openBlob(hash string, stored []byte) ([]byte, error) {
	if k == nil {
		return stored, nil
	}
	return open(k.blob, stored, adBlob+hash)
}

// overhead is what sealing adds to a blob.
func (k *keyring) overhead() int64 {
	if k == nil {
		return 0
	}
	return sealOverhead
}

// objectOverhead is what sealing adds to a manifest.
func (k *keyring) objectOverhead() int64 {
	if k == nil {
		return 0
	}
	return int64(len(objectMagic)) + sealOverhead
}

// sealObject encrypts a manifest's bytes for store key key.
func (k *keyring) sealObject(key string, b []byte) []byte {
	if k == nil {
		return b
	}
	buf := make([]byte, 0, len(objectMagic)+len(b)+sealOverhead)
	buf = append(buf, objectMagic...)
	buf = append(buf, b...)
	sealed := seal(k.object, buf[len(objectMagic):], adObject+key)
	return buf[:len(objectMagic)+len(sealed)]
}

// openObject undoes sealObject.
func (k *keyring) openObject(key string, b []byte) ([]byte, error) {
	if k == nil {
		return b, nil
	}
	if len(b) < len(objectMagic) || string(b[:len(objectMagic)]) != objectMagic {
		return nil, corruptf("%s is not an encrypted object", key)
	}
	out, err := open(k.object, b[len(objectMagic):], adObject+key)
	if err != nil {
		return nil, corruptf("%s: %v", key, err)
	}
	return out, nil
}

// ReadKeyFile reads a master key file, which holds exactly MasterKeySize
// raw bytes (e.g. made with head -c 32 /dev/urandom). Errors name the
// file, never the bytes.
func ReadKeyFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MasterKeySize+1))
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	if len(b) != MasterKeySize {
		return nil, fmt.Errorf("%w: key file %s must hold exactly %d bytes (head -c %d /dev/urandom), it has %s", ErrKey, path, MasterKeySize, MasterKeySize, sizeWord(len(b)))
	}
	return b, nil
}

func sizeWord(n int) string {
	if n > MasterKeySize {
		return "more"
	}
	return fmt.Sprint(n)
}
