;; expect: export run is not a function of type () -> ()
(module
  (memory 1)
  (func (export "run") (param i32)))
