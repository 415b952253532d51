;; expect: has no memory 0
(module
  (func (export "run")))
