package csi

import (
	"errors"
	"strconv"

	"github.com/cairn-csi/cairn/internal/model"
)

func itoa(i int) string { return strconv.Itoa(i) }

func isNotFoundErr(err error) bool { return errors.Is(err, model.ErrNotFound) }
